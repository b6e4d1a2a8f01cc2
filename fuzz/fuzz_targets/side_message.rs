//! JSON side messages (PRODUCT.md 9.3) on arbitrary text: never a panic, and what is sent
//! on is always one JSON object with a string `type` within the size bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wiresocket::sync::side_message::{read, Sender, Side, SIDE_MESSAGE_BYTES_MAX};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let sender = || Sender {
        user: serde_json::json!({"sub": "u", "name": "N"}),
        now: "2026-12-05T00:00:00.000Z".into(),
    };
    match read(text, sender, || "cmt_0".into()) {
        Ok(Side::Relay) => {
            assert!(text.len() <= SIDE_MESSAGE_BYTES_MAX);
            let v: serde_json::Value = serde_json::from_str(text).expect("relayed is JSON");
            assert!(v["type"].is_string());
        }
        Ok(Side::Comment { broadcast, .. }) => {
            let v: serde_json::Value = serde_json::from_str(&broadcast).expect("sent is JSON");
            assert!(v["type"].as_str().unwrap().starts_with("design-comment:"));
            assert!(broadcast.len() <= 2 * SIDE_MESSAGE_BYTES_MAX);
        }
        Err(e) => assert!(e.reason().len() <= 123),
    }
});
