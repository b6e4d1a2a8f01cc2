//! HTTP/1.1 just far enough for a WebSocket server: parse one request with hard limits, write
//! small complete responses. No bodies are read (every endpoint here is a GET), no keep-alive.

pub mod ip_rate;
pub mod request;
pub mod response;
