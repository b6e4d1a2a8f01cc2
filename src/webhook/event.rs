//! What an application is told (PRODUCT.md 9.1): the events, their names as apps filter them
//! (`webhook_events`), and the JSON body every one of them has:
//! `{"type", "timestamp", "tenantId", "appId", "document", "data"}`.

use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    SessionStarted,
    DocumentChanged,
    PresenceChanged,
    SessionEnded,
    CommentAdded,
    CommentResolved,
    CommentUnresolved,
    CommentDeleted,
}

impl EventKind {
    pub const ALL: [EventKind; 8] = [
        EventKind::SessionStarted,
        EventKind::DocumentChanged,
        EventKind::PresenceChanged,
        EventKind::SessionEnded,
        EventKind::CommentAdded,
        EventKind::CommentResolved,
        EventKind::CommentUnresolved,
        EventKind::CommentDeleted,
    ];

    pub fn name(self) -> &'static str {
        match self {
            EventKind::SessionStarted => "session.started",
            EventKind::DocumentChanged => "document.changed",
            EventKind::PresenceChanged => "presence.changed",
            EventKind::SessionEnded => "session.ended",
            EventKind::CommentAdded => "comment.added",
            EventKind::CommentResolved => "comment.resolved",
            EventKind::CommentUnresolved => "comment.unresolved",
            EventKind::CommentDeleted => "comment.deleted",
        }
    }

    pub fn parse(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// One event of one document, as it is queued, retried and signed: its id and body stay
/// the same across retries, so a receiver can drop duplicates by `webhook-id`.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// `msg_` and 32 hex digits of randomness: unique per event.
    pub id: String,
    pub kind: EventKind,
    /// When it happened (unix milliseconds).
    pub at_ms: u64,
    /// The JSON body, made once.
    pub body: Vec<u8>,
    /// A `document.changed` event's update and state vector, kept so that a later change
    /// can be merged into it while it waits (see `delivery`).
    pub change: Option<Change>,
}

/// What a `document.changed` event carries, as Yjs v1 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Everything that changed since the previous `document.changed` (or the session's
    /// start).
    pub update: Vec<u8>,
    /// The document's state vector after it.
    pub state_vector: Vec<u8>,
}

/// Whose document an event is about.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub tenant_id: &'a str,
    pub app_id: &'a str,
    pub document: &'a str,
}

impl<'a> Subject<'a> {
    /// The subject for `document` of `app`, an app key (`{tenant}::{app}`: ids contain no
    /// `::` and neither start nor end with `:`, so the split is the one that made it).
    pub fn of(app: &'a str, document: &'a str) -> Subject<'a> {
        let (tenant_id, app_id) = app.split_once("::").expect("app keys are tenant::app");
        Subject {
            tenant_id,
            app_id,
            document,
        }
    }
}

impl Event {
    pub fn new(kind: EventKind, subject: Subject<'_>, data: Value, at_ms: u64) -> Event {
        let body = json!({
            "type": kind.name(),
            "timestamp": crate::http::response::iso8601_utc(at_ms),
            "tenantId": subject.tenant_id,
            "appId": subject.app_id,
            "document": subject.document,
            "data": data,
        });
        Event {
            id: Event::new_id(),
            kind,
            at_ms,
            body: serde_json::to_vec(&body).expect("a JSON value serializes"),
            change: None,
        }
    }

    /// `msg_` and 32 hex digits of randomness: unique per call.
    pub fn new_id() -> String {
        format!("msg_{:032x}", rand::random::<u128>())
    }

    /// A `document.changed` event: `data` is `{"update", "stateVector"}`, both base64.
    pub fn changed(subject: Subject<'_>, change: Change, at_ms: u64) -> Event {
        use base64::engine::general_purpose::STANDARD;
        use base64::Engine;
        let data = json!({
            "update": STANDARD.encode(&change.update),
            "stateVector": STANDARD.encode(&change.state_vector),
        });
        Event {
            change: Some(change),
            ..Event::new(EventKind::DocumentChanged, subject, data, at_ms)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_are_not_events() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::parse(kind.name()), Some(kind));
        }
        assert_eq!(EventKind::parse("session.paused"), None);
        assert_eq!(EventKind::parse("SESSION.ENDED"), None);
    }

    #[test]
    fn the_body_has_exactly_the_documented_fields() {
        let subject = Subject {
            tenant_id: "acme",
            app_id: "docs",
            document: "plan \"q3\"",
        };
        let event = Event::new(
            EventKind::SessionEnded,
            subject,
            json!({"state": "AAA="}),
            1_764_910_800_123,
        );
        let body: Value = serde_json::from_slice(&event.body).unwrap();
        assert_eq!(
            body,
            json!({
                "type": "session.ended",
                "timestamp": "2025-12-05T05:00:00.123Z",
                "tenantId": "acme",
                "appId": "docs",
                "document": "plan \"q3\"",
                "data": {"state": "AAA="},
            })
        );
        assert!(event.id.starts_with("msg_") && event.id.len() == 36);
        let again = Event::new(EventKind::SessionEnded, subject, json!({}), 0);
        assert_ne!(event.id, again.id);
    }
}
