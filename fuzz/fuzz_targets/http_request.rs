//! The request head parser, the upgrade checks and token extraction.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wiresocket::auth::transport;
use wiresocket::http::request::{parse_request, percent_decode};
use wiresocket::ws::handshake::check_upgrade;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(req)) = parse_request(data, 8192) {
        let _ = check_upgrade(&req);
        let _ = transport::extract(&req);
        let _ = percent_decode(req.path);
    }
});
