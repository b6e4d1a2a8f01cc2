//! A connection's side message (PRODUCT.md 9.3), in either framing: counted against its
//! message rate, checked (`sync::side_message`), and, for a design comment, completed with
//! the sender's user and sent to the app as a `comment.*` webhook. What the document's
//! connections then get is [`Outgoing`]; the caller hands it to the room (or its link).

use super::shard::Shard;
use crate::auth::claims::User;
use crate::refusal::Refusal;
use crate::sync::message_rate::{MessageRate, HEAVY_MESSAGE_WEIGHT};
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
    admit(shard, rate, 1)?;
    let sender = || side_message::Sender {
        user: user.json(),
        now: crate::http::response::iso8601_utc(crate::log::unix_ms()),
    };
    let new_id = || format!("cmt_{:032x}", rand::random::<u128>());
    let side = side_message::read(text, sender, new_id).map_err(Refusal::SideMessage)?;
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
            // A comment also costs the app a webhook call.
            admit(shard, rate, HEAVY_MESSAGE_WEIGHT - 1)?;
            let kind = match action {
                CommentAction::Added => EventKind::CommentAdded,
                CommentAction::Resolved => EventKind::CommentResolved,
                CommentAction::Unresolved => EventKind::CommentUnresolved,
                CommentAction::Deleted => EventKind::CommentDeleted,
            };
            let (app, document) = crate::sync::document::key_parts(key);
            let webhooks = &shard.shared.webhooks;
            if webhooks.wants(app, kind) {
                // The app keeps the comments: one it cannot take is not shown to anyone,
                // and its sender is told to try again.
                if webhooks.push(app, document, kind, data).is_none() {
                    return Err(Refusal::CommentNotTaken);
                }
            }
            Outgoing {
                payload: Cow::Owned(broadcast),
                echo: true,
            }
        }
    }))
}

/// Takes `weight` from the connection's message rate.
fn admit(shard: &Shard, rate: &mut MessageRate, weight: u32) -> Result<(), Refusal> {
    if rate.admit(weight, crate::log::monotonic_ms()) {
        Ok(())
    } else {
        let per_second = shard.config().websocket.messages_per_second;
        Err(Refusal::MessageRate(per_second))
    }
}
