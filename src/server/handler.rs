//! What a session does with a connection's data messages: the one interface between the
//! read loop (`session`) and what a connection is for (a document, a Hocuspocus socket, the
//! echo route).

use crate::refusal::Refusal;
use crate::ws::frame::Opcode;

pub trait Handler {
    /// A whole data message (text is valid UTF-8).
    fn on_message(&mut self, opcode: Opcode, payload: &[u8]) -> Result<(), Refusal>;
    /// The messages of one read are handled: finish what was batched across them.
    fn on_batch_end(&mut self) -> Result<(), Refusal> {
        Ok(())
    }
    /// Ready when the connection may be read again; pending while reading it would only
    /// pile up work that is behind (a document whose integration lags).
    fn poll_read_ready(&mut self, _cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        std::task::Poll::Ready(())
    }
    /// A call into this handler panicked (the session closes with 1011): drop whatever
    /// state the panic may have left half-changed.
    fn on_panic(&mut self) {}
    /// The session is over; called exactly once.
    fn on_end(&mut self);
}
