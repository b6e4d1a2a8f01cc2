//! The y-websocket sync protocol and rooms, independent of the runtime and the HTTP layer:
//! bounded decoding of client messages, awareness state, and `Room` (one live document).

pub mod awareness;
pub mod document;
pub mod hocuspocus;
pub mod lib0;
pub mod message_rate;
pub mod protocol;
pub mod room;
pub mod side_message;
pub mod update_check;
