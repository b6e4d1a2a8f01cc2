//! RFC 6455, server side: pure functions over byte slices (no I/O, no runtime), so that the
//! benches and fuzz targets call exactly what the server runs.

pub mod close;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod message;
pub mod utf8;
