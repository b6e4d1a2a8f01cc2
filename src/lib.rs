//! wiresocket: a WireSocket-compatible real-time sync server for Yjs documents.
//!
//! Pure layers (no I/O): [`http`], [`ws`], [`sync`], [`outbox`], [`webhook`]'s event,
//! signature and target. The runtime that wires them to sockets, one glommio executor per
//! core: [`server`].

pub mod auth;
pub mod config;
pub mod http;
pub mod log;
pub mod outbox;
pub mod refusal;
pub mod registry;
pub mod server;
pub mod sync;
pub mod webhook;
pub mod ws;
