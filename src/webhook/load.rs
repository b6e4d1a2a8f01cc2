//! The load hook (PRODUCT.md 9.2): a starting session asks the application for the
//! document's state. The call POSTs the signed `session.started` body; `200` with a body is
//! the state (a Yjs v1 update), `200` empty, `204` or `404` start the document empty, and
//! anything else (or no answer in time) is a failure: the session does not start, so no
//! client can fork the document from an empty one.

use super::endpoint::{Answer, Endpoint};
use super::event::Event;
use super::signature::WebhookSecret;
use std::time::{Duration, Instant};

/// One app's load hook.
#[derive(Debug)]
pub struct Loader {
    pub endpoint: Endpoint,
    pub secret: WebhookSecret,
    /// How long a session waits for the answer (`load_timeout_ms`).
    pub timeout: Duration,
}

/// What the application gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loaded {
    /// Start the document empty.
    Empty,
    /// The document's state, a Yjs v1 update (checked like any other before it is applied).
    State(Vec<u8>),
}

impl Loader {
    /// Makes the call (blocking: on a call thread) with what is left until `deadline`.
    /// The body is the `session.started` event's, under an id of its own (a receiver that
    /// drops duplicate ids must not take the webhook that follows for a replay). The state
    /// is read up to `state_bytes_max`.
    pub fn fetch(
        &self,
        started: &Event,
        state_bytes_max: u64,
        deadline: Instant,
    ) -> Result<Loaded, String> {
        let left = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or("no call thread was free within load_timeout_ms")?;
        let answer = self.endpoint.post(
            &self.secret,
            &Event::new_id(),
            &started.body,
            state_bytes_max,
            Some(left),
        )?;
        loaded(answer)
    }
}

/// The answer's meaning.
fn loaded(answer: Answer) -> Result<Loaded, String> {
    match answer.status {
        200 if answer.body.is_empty() => Ok(Loaded::Empty),
        200 => Ok(Loaded::State(answer.body)),
        204 | 404 => Ok(Loaded::Empty),
        status => Err(format!(
            "answered HTTP {status}; a load hook answers 200 with the state, or 204 or 404 to start empty"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &[u8]) -> Result<Loaded, String> {
        loaded(Answer {
            status,
            body: body.to_vec(),
        })
    }

    #[test]
    fn only_200_204_and_404_are_answers() {
        assert_eq!(answer(200, b"\x00\x00"), Ok(Loaded::State(vec![0, 0])));
        assert_eq!(answer(200, b""), Ok(Loaded::Empty));
        assert_eq!(answer(204, b""), Ok(Loaded::Empty));
        assert_eq!(answer(404, b""), Ok(Loaded::Empty));
        for status in [201, 202, 301, 400, 401, 500, 503] {
            let refused = answer(status, b"\x00\x00").unwrap_err();
            assert!(refused.contains(&format!("HTTP {status}")), "{refused}");
        }
    }
}
