//! JSON side messages (PRODUCT.md 9.3): one JSON object with a string `type`, in a text
//! frame (y-websocket framing) or a Stateless message (Hocuspocus). Any `type` is relayed
//! as it came to the document's other connections, except the design-comment protocol's,
//! which the server completes (an id, the user from the token, a time) and sends to every
//! connection, the sender too, and to the app as a `comment.*` webhook.
//!
//! Pure: bytes in, what to send out.

use serde_json::{json, Map, Value};

/// Longest side message.
pub const SIDE_MESSAGE_BYTES_MAX: usize = 64 << 10;

/// The longest comment id a client may name, and the longest optional string field.
const COMMENT_ID_BYTES_MAX: usize = 256;
const FIELD_BYTES_MAX: usize = 4 << 10;

/// Why a side message is refused (1007, or 1009 when too long).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SideError {
    TooLarge,
    /// Not one JSON object with a string `type`.
    NotAnObject,
    /// A `design-comment:*` type the protocol does not have (clients may not send the
    /// server's own `design-comment:added` and the like).
    UnknownComment,
    /// A design comment's field is missing or has the wrong shape.
    Field(&'static str, &'static str),
    /// A field a design comment does not have (its name as the reason shows it: 32
    /// characters at most, anything but printable ASCII as `?`).
    UnknownField(String),
}

impl SideError {
    pub fn reason(&self) -> String {
        match self {
            SideError::TooLarge => {
                format!("side message larger than {SIDE_MESSAGE_BYTES_MAX} bytes")
            }
            SideError::NotAnObject => {
                "side message is not one JSON object with a string type".into()
            }
            SideError::UnknownComment => "unknown design-comment message type".into(),
            SideError::Field(field, why) => format!("design-comment field {field}: {why}"),
            SideError::UnknownField(field) => {
                format!("design-comment field \"{field}\" is not a field of this message")
            }
        }
    }
}

/// A design-comment action, as the app's webhook names it (`comment.added`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommentAction {
    Added,
    Resolved,
    Unresolved,
    Deleted,
}

/// What a valid side message leads to.
#[derive(Debug, Clone, PartialEq)]
pub enum Side {
    /// Relayed as it came to the document's other connections.
    Relay,
    /// A design comment: `broadcast` (JSON text) goes to every connection, the sender too;
    /// `data` is the webhook's.
    Comment {
        action: CommentAction,
        broadcast: String,
        data: Value,
    },
}

/// Who sent it and when, as the server knows it.
pub struct Sender {
    /// `{"sub": ..., "name"?: ...}` from the sender's token.
    pub user: Value,
    /// ISO 8601, now.
    pub now: String,
}

/// Reads one side message. `sender` says who sent it and when, and `new_id` makes a comment
/// id: each is called only when a design comment needs it (a message relayed as it came
/// makes neither).
pub fn read(
    text: &str,
    sender: impl FnOnce() -> Sender,
    new_id: impl FnOnce() -> String,
) -> Result<Side, SideError> {
    if text.len() > SIDE_MESSAGE_BYTES_MAX {
        return Err(SideError::TooLarge);
    }
    // serde_json bounds nesting (128 levels), so a deep message cannot exhaust the stack.
    let Ok(Value::Object(mut message)) = serde_json::from_str::<Value>(text) else {
        return Err(SideError::NotAnObject);
    };
    let Some(Value::String(kind)) = message.remove("type") else {
        return Err(SideError::NotAnObject);
    };
    let Some(action) = kind.strip_prefix("design-comment:") else {
        return Ok(Side::Relay);
    };
    let sender = sender();
    let (action, mut out) = match action {
        "add" => (CommentAction::Added, added(message, &sender, new_id())?),
        "resolve" => {
            let id = comment_id(message)?;
            let out = json!({
                "commentId": id,
                "resolvedBy": sender.user,
                "resolvedAt": sender.now,
            });
            (CommentAction::Resolved, out)
        }
        "unresolve" => {
            let out = json!({ "commentId": comment_id(message)? });
            (CommentAction::Unresolved, out)
        }
        "delete" => {
            let out = json!({ "commentId": comment_id(message)? });
            (CommentAction::Deleted, out)
        }
        _ => return Err(SideError::UnknownComment),
    };
    let mut data = out.clone();
    if matches!(action, CommentAction::Unresolved | CommentAction::Deleted) {
        // The app is told who did it; the clients only what changed.
        data["by"] = sender.user.clone();
    }
    let name = match action {
        CommentAction::Added => "design-comment:added",
        CommentAction::Resolved => "design-comment:resolved",
        CommentAction::Unresolved => "design-comment:unresolved",
        CommentAction::Deleted => "design-comment:deleted",
    };
    out.as_object_mut()
        .expect("made as an object")
        .insert("type".into(), name.into());
    Ok(Side::Comment {
        action,
        broadcast: out.to_string(),
        data,
    })
}

/// `design-comment:add {content, xPercent, yPercent, selector?, pagePath?, parentId?}`.
fn added(mut message: Map<String, Value>, sender: &Sender, id: String) -> Result<Value, SideError> {
    let content = match message.remove("content") {
        Some(Value::String(s)) if !s.is_empty() => s,
        _ => {
            return Err(SideError::Field(
                "content",
                "a non-empty string is required",
            ))
        }
    };
    let mut out = Map::new();
    out.insert("id".into(), id.into());
    out.insert("content".into(), content.into());
    for field in ["xPercent", "yPercent"] {
        match message.remove(field) {
            Some(Value::Number(n)) if n.as_f64().is_some_and(|p| (0.0..=100.0).contains(&p)) => {
                out.insert(field.into(), Value::Number(n));
            }
            _ => {
                return Err(SideError::Field(
                    field,
                    "a number from 0 to 100 is required",
                ))
            }
        }
    }
    for field in ["selector", "pagePath", "parentId"] {
        match message.remove(field) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s.len() <= FIELD_BYTES_MAX => {
                out.insert(field.into(), s.into());
            }
            Some(_) => return Err(SideError::Field(field, "a string of at most 4096 bytes")),
        }
    }
    no_other_fields(&message)?;
    out.insert("user".into(), sender.user.clone());
    out.insert("createdAt".into(), sender.now.clone().into());
    Ok(Value::Object(out))
}

/// `{commentId}`: the comment a resolve, unresolve or delete is about.
fn comment_id(mut message: Map<String, Value>) -> Result<String, SideError> {
    let id = match message.remove("commentId") {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= COMMENT_ID_BYTES_MAX => s,
        _ => {
            return Err(SideError::Field(
                "commentId",
                "a non-empty string of at most 256 bytes is required",
            ))
        }
    };
    no_other_fields(&message)?;
    Ok(id)
}

fn no_other_fields(rest: &Map<String, Value>) -> Result<(), SideError> {
    match rest.keys().next() {
        None => Ok(()),
        Some(name) => {
            // Shown in a close reason (123 bytes at most): escapes would lengthen it (the
            // side_message fuzz target found 31 DEL characters making it 262 bytes).
            let shown = name
                .chars()
                .take(32)
                .map(|c| if c.is_ascii_graphic() { c } else { '?' })
                .collect();
            Err(SideError::UnknownField(shown))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sender_user() -> Value {
        json!({"sub": "u1", "name": "Ada"})
    }

    fn read_now(text: &str) -> Result<Side, SideError> {
        let sender = || Sender {
            user: sender_user(),
            now: "2026-12-05T07:00:00.000Z".into(),
        };
        read(text, sender, || "cmt_1".into())
    }

    fn comment(text: &str) -> (CommentAction, Value, Value) {
        match read_now(text) {
            Ok(Side::Comment {
                action,
                broadcast,
                data,
            }) => (action, serde_json::from_str(&broadcast).unwrap(), data),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn other_types_are_relayed_and_non_objects_refused() {
        assert_eq!(read_now(r#"{"type":"cursor","x":1}"#), Ok(Side::Relay));
        assert_eq!(read_now(r#"{"type":"design-commentary"}"#), Ok(Side::Relay));
        for bad in [
            "",
            "[]",
            "\"x\"",
            "{}",
            r#"{"type":1}"#,
            "{\"type\":\"a\"",
            "nul",
        ] {
            assert_eq!(read_now(bad), Err(SideError::NotAnObject), "{bad:?}");
        }
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(read_now(&deep), Err(SideError::NotAnObject));
        let long = format!(
            r#"{{"type":"x","p":"{}"}}"#,
            "a".repeat(SIDE_MESSAGE_BYTES_MAX)
        );
        assert_eq!(read_now(&long), Err(SideError::TooLarge));
    }

    #[test]
    fn an_added_comment_is_completed_by_the_server() {
        let (action, out, data) = comment(
            r#"{"type":"design-comment:add","content":"move this","xPercent":12.5,"yPercent":100,"pagePath":"/pricing","parentId":null}"#,
        );
        assert_eq!(action, CommentAction::Added);
        assert_eq!(
            out,
            json!({
                "type": "design-comment:added",
                "id": "cmt_1",
                "content": "move this",
                "xPercent": 12.5,
                "yPercent": 100,
                "pagePath": "/pricing",
                "user": {"sub": "u1", "name": "Ada"},
                "createdAt": "2026-12-05T07:00:00.000Z",
            })
        );
        let mut expected = out.clone();
        expected.as_object_mut().unwrap().remove("type");
        assert_eq!(data, expected);
    }

    #[test]
    fn resolve_unresolve_and_delete_name_a_comment() {
        let (action, out, _) = comment(r#"{"type":"design-comment:resolve","commentId":"c9"}"#);
        assert_eq!(action, CommentAction::Resolved);
        assert_eq!(
            out,
            json!({"type": "design-comment:resolved", "commentId": "c9",
                   "resolvedBy": sender_user(), "resolvedAt": "2026-12-05T07:00:00.000Z"})
        );
        let (action, out, data) =
            comment(r#"{"type":"design-comment:unresolve","commentId":"c9"}"#);
        assert_eq!(action, CommentAction::Unresolved);
        assert_eq!(
            out,
            json!({"type": "design-comment:unresolved", "commentId": "c9"})
        );
        assert_eq!(data, json!({"commentId": "c9", "by": sender_user()}));
        let (action, out, _) = comment(r#"{"type":"design-comment:delete","commentId":"c9"}"#);
        assert_eq!(action, CommentAction::Deleted);
        assert_eq!(
            out,
            json!({"type": "design-comment:deleted", "commentId": "c9"})
        );
    }

    #[test]
    fn malformed_comments_are_refused_naming_the_field() {
        let cases = [
            (
                r#"{"type":"design-comment:added","id":"forged"}"#,
                SideError::UnknownComment,
            ),
            (
                r#"{"type":"design-comment:add","xPercent":1,"yPercent":1}"#,
                SideError::Field("content", "a non-empty string is required"),
            ),
            (
                r#"{"type":"design-comment:add","content":"","xPercent":1,"yPercent":1}"#,
                SideError::Field("content", "a non-empty string is required"),
            ),
            (
                r#"{"type":"design-comment:add","content":"a","xPercent":101,"yPercent":1}"#,
                SideError::Field("xPercent", "a number from 0 to 100 is required"),
            ),
            (
                r#"{"type":"design-comment:add","content":"a","xPercent":1,"yPercent":"1"}"#,
                SideError::Field("yPercent", "a number from 0 to 100 is required"),
            ),
            (
                r#"{"type":"design-comment:add","content":"a","xPercent":1,"yPercent":1,"selector":3}"#,
                SideError::Field("selector", "a string of at most 4096 bytes"),
            ),
            (
                r#"{"type":"design-comment:add","content":"a","xPercent":1,"yPercent":1,"id":"mine"}"#,
                SideError::UnknownField("id".into()),
            ),
            (
                r#"{"type":"design-comment:resolve"}"#,
                SideError::Field(
                    "commentId",
                    "a non-empty string of at most 256 bytes is required",
                ),
            ),
            (
                r#"{"type":"design-comment:delete","commentId":7}"#,
                SideError::Field(
                    "commentId",
                    "a non-empty string of at most 256 bytes is required",
                ),
            ),
            (
                r#"{"type":"design-comment:delete","commentId":"c","resolvedBy":"x"}"#,
                SideError::UnknownField("resolvedBy".into()),
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(read_now(text), Err(expected), "{text}");
        }
        let long_name = format!(
            r#"{{"type":"design-comment:delete","commentId":"c","{}":1}}"#,
            "é".repeat(100)
        );
        let refused = read_now(&long_name).unwrap_err();
        assert_eq!(refused, SideError::UnknownField("?".repeat(32)));
        assert!(refused.reason().len() <= 123, "fits a close frame");
        // Found by the side_message fuzz target: control characters, escaped, made the
        // reason longer than a close frame holds.
        let dels = format!(
            r#"{{"type":"design-comment:delete","commentId":"c","{}x":1}}"#,
            "\u{7f}".repeat(40)
        );
        let refused = read_now(&dels).unwrap_err();
        assert!(refused.reason().len() <= 123, "{}", refused.reason());
    }
}
