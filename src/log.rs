//! Structured logs: one logfmt line per event on stderr (`ts=… level=… event=… key=value`).
//! Values are quoted when they need it. Tokens and document contents never go here.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Milliseconds since the process first asked: for rates and timeouts, which must not move
/// when the wall clock is set.
pub fn monotonic_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

pub fn event(level: &str, event: &str, fields: &[(&str, &dyn std::fmt::Display)]) {
    let mut line = format!(
        "ts={} level={level} event={event}",
        crate::http::response::iso8601_utc(unix_ms())
    );
    for (k, v) in fields {
        let v = v.to_string();
        if v.is_empty() || v.contains([' ', '"', '=']) {
            line.push_str(&format!(" {k}={v:?}"));
        } else {
            line.push_str(&format!(" {k}={v}"));
        }
    }
    line.push('\n');
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

pub fn info(name: &str, fields: &[(&str, &dyn std::fmt::Display)]) {
    event("info", name, fields)
}

pub fn warn(name: &str, fields: &[(&str, &dyn std::fmt::Display)]) {
    event("warn", name, fields)
}
