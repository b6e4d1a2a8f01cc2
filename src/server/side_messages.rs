//! A connection's side message (PRODUCT.md 9.3), in either framing: counted against its
//! message rate, checked (`sync::side_message`), and, for a design comment, completed with
//! the sender's user and sent to the app as a `comment.*` webhook. What the document's
//! connections then get is [`Outgoing`]; the caller hands it to the room (or its link).

use super::shard::Shard;
use crate::auth::claims::User;
use crate::refusal::Refusal;
use crate::sync::message_rate::MessageRate;
use crate::sync::side_message::{self, CommentAction, Side};
use crate::webhook::event::EventKind;
use std::borrow::Cow;

/// What the document's connections get.
pub struct Outgoing<'a> {
    /// JSON text.
    pub payload: Cow<'a, str>,
    /// To the sender too (a design comment, which it learns its id from).
    pub echo: bool,
}

/// Reads `text` from a connection of `user` to `key`'s document. `None` for a viewer, whose
/// side messages go nowhere (the caller tells it `read-only` where its framing can).
pub fn read<'a>(
    shard: &Shard,
    key: &str,
    user: &User,
    can_write: bool,
    text: &'a str,
    rate: &mut MessageRate,
) -> Result<Option<Outgoing<'a>>, Refusal> {
    if !rate.admit(1, crate::log::monotonic_ms()) {
        let per_second = shard.config().websocket.messages_per_second;
        return Err(Refusal::MessageRate(per_second));
    }
    let user_json = user.json();
    let now = crate::http::response::iso8601_utc(crate::log::unix_ms());
    let sender = side_message::Sender {
        user: &user_json,
        now: &now,
    };
    let new_id = || format!("cmt_{:032x}", rand::random::<u128>());
    let side = side_message::read(text, &sender, new_id).map_err(Refusal::SideMessage)?;
    if !can_write {
        return Ok(None);
    }
    Ok(Some(match side {
        Side::Relay => Outgoing {
            payload: Cow::Borrowed(text),
            echo: false,
        },
        Side::Comment {
            action,
            broadcast,
            data,
        } => {
            if let Some(webhooks) = &shard.shared.webhooks {
                let (app, document) = crate::sync::document::key_parts(key);
                let kind = match action {
                    CommentAction::Added => EventKind::CommentAdded,
                    CommentAction::Resolved => EventKind::CommentResolved,
                    CommentAction::Unresolved => EventKind::CommentUnresolved,
                    CommentAction::Deleted => EventKind::CommentDeleted,
                };
                webhooks.push(app, document, kind, data);
            }
            Outgoing {
                payload: Cow::Owned(broadcast),
                echo: true,
            }
        }
    }))
}
