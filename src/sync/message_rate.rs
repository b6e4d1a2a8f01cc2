//! Messages per connection: a token bucket, weighted by what a message makes the server do.
//! Most messages cost one token; a step 1 or an awareness query makes the server encode a
//! whole document or every presence state, so it costs [`HEAVY_MESSAGE_WEIGHT`], and a step
//! 1 whose answer must be encoded (not one shared from the cache) one more token per
//! [`BYTES_PER_TOKEN`] of the document.

use super::protocol::Message;

/// Tokens a step 1 or an awareness query costs.
pub const HEAVY_MESSAGE_WEIGHT: u32 = 16;

/// Document bytes an encoded step 1 answer costs a token for.
pub const BYTES_PER_TOKEN: usize = 64 << 10;

/// What `message` costs against a connection's rate, when answering a step 1 means encoding
/// `encode_bytes` of document (0 when the answer is shared from the cache).
pub fn weight(message: &Message<'_>, encode_bytes: usize) -> u32 {
    match message {
        Message::SyncStep1(_) => {
            let per_size = (encode_bytes / BYTES_PER_TOKEN).min(u32::MAX as usize) as u32;
            HEAVY_MESSAGE_WEIGHT.saturating_add(per_size)
        }
        Message::QueryAwareness => HEAVY_MESSAGE_WEIGHT,
        Message::Update { .. } | Message::Awareness(_) => 1,
    }
}

/// A token bucket in thousandths of a token, so that refilling is integer arithmetic:
/// `per_second` tokens a second are `per_second` thousandths a millisecond.
#[derive(Debug, Clone)]
pub struct MessageRate {
    tokens_milli: u64,
    burst_milli: u64,
    per_second: u64,
    refilled_at_ms: u64,
}

impl MessageRate {
    /// A full bucket of `burst` tokens at `now_ms`, refilled at `per_second`.
    pub fn new(per_second: u32, burst: u32, now_ms: u64) -> Self {
        assert!(per_second > 0 && burst >= HEAVY_MESSAGE_WEIGHT);
        let burst_milli = burst as u64 * 1000;
        MessageRate {
            tokens_milli: burst_milli,
            burst_milli,
            per_second: per_second as u64,
            refilled_at_ms: now_ms,
        }
    }

    /// Takes `weight` tokens (at most a whole burst: a message that costs more still goes,
    /// once the bucket is full) at `now_ms`; false (and nothing taken) when there are not
    /// enough. A clock that goes back refills nothing.
    pub fn admit(&mut self, weight: u32, now_ms: u64) -> bool {
        let elapsed_ms = now_ms.saturating_sub(self.refilled_at_ms);
        if elapsed_ms > 0 {
            self.tokens_milli = self
                .tokens_milli
                .saturating_add(elapsed_ms.saturating_mul(self.per_second))
                .min(self.burst_milli);
            self.refilled_at_ms = now_ms;
        }
        let cost_milli = (weight as u64 * 1000).min(self.burst_milli);
        if self.tokens_milli < cost_milli {
            return false;
        }
        self.tokens_milli -= cost_milli;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let mut rate = MessageRate::new(500, 2000, 0);
        assert_eq!((0..3000).filter(|_| rate.admit(1, 0)).count(), 2000);
        assert!(!rate.admit(1, 1), "half a token back after 1 ms");
        assert!(rate.admit(1, 2), "one token back after 2 ms");
        // A second later: 500 more, no more.
        assert_eq!((0..1000).filter(|_| rate.admit(1, 1002)).count(), 500);
    }

    #[test]
    fn heavy_messages_cost_more_and_a_refusal_takes_nothing() {
        let mut rate = MessageRate::new(500, 2000, 0);
        assert_eq!(
            (0..200)
                .filter(|_| rate.admit(HEAVY_MESSAGE_WEIGHT, 0))
                .count(),
            125
        );
        assert!(!rate.admit(HEAVY_MESSAGE_WEIGHT, 0));
        // 16 tokens take 32 ms at 500/s; the refusals above did not put the bucket in debt.
        assert!(!rate.admit(HEAVY_MESSAGE_WEIGHT, 31));
        assert!(rate.admit(HEAVY_MESSAGE_WEIGHT, 32));
    }

    #[test]
    fn the_bucket_never_holds_more_than_the_burst_and_time_going_back_is_harmless() {
        let mut rate = MessageRate::new(500, 20, 1_000);
        assert_eq!(
            (0..100).filter(|_| rate.admit(1, 1_000_000_000)).count(),
            20
        );
        assert!(!rate.admit(1, 5), "the clock went back: no refill");
        assert!(rate.admit(1, 1_000_000_002));
    }

    #[test]
    fn weights_follow_the_work_a_message_makes() {
        let limits = crate::sync::update_check::UpdateLimits::default();
        let decode = |bytes: &[u8], document_bytes| {
            weight(
                &crate::sync::protocol::decode(bytes, &limits).unwrap(),
                document_bytes,
            )
        };
        let mb = 1 << 20;
        assert_eq!(
            decode(&[0, 0, 1, 0], 0),
            HEAVY_MESSAGE_WEIGHT,
            "step 1, answer cached"
        );
        assert_eq!(
            decode(&[0, 0, 3, 1, 5, 1], mb),
            HEAVY_MESSAGE_WEIGHT + 16,
            "step 1 whose answer encodes 1 MiB"
        );
        assert_eq!(decode(&[3], mb), HEAVY_MESSAGE_WEIGHT, "query awareness");
        assert_eq!(decode(&[0, 2, 2, 0, 0], mb), 1, "update");
        assert_eq!(decode(&[1, 1, 0], mb), 1, "awareness");
    }

    #[test]
    fn a_message_costlier_than_the_burst_goes_only_from_a_full_bucket() {
        let mut rate = MessageRate::new(500, 2000, 0);
        assert!(rate.admit(5000, 0), "a full bucket pays for it");
        assert!(!rate.admit(5000, 1_000), "half full");
        assert!(rate.admit(5000, 4_000), "full again after 4 s");
    }
}
