//! An application's answer to the authorization callback (PRODUCT.md 9.4): the first two
//! bytes are the status, the rest the body. Never a panic; only a 200 whose body is a JSON
//! object with `"allow": true` lets a connection in; a refusal's reason always fits a close
//! frame after `Forbidden: ` and carries no control characters.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wiresocket::webhook::authorize::{decision, Decision, REASON_BYTES_MAX};
use wiresocket::webhook::endpoint::Answer;

fuzz_target!(|data: &[u8]| {
    let Some((status, body)) = data.split_first_chunk::<2>() else {
        return;
    };
    let answer = Answer {
        status: u16::from_le_bytes(*status),
        body: body.to_vec(),
    };
    match decision(&answer) {
        Ok(Decision::Allow { .. }) => {
            assert_eq!(answer.status, 200);
            let v: serde_json::Value = serde_json::from_slice(body).expect("an allow is JSON");
            assert_eq!(v["allow"], serde_json::Value::Bool(true));
        }
        Ok(Decision::Deny { reason }) => {
            assert_eq!(answer.status, 200);
            assert!(!reason.is_empty() && reason.len() <= REASON_BYTES_MAX);
            assert!(!reason.chars().any(char::is_control));
            assert!(format!("Forbidden: {reason}").len() <= 123);
        }
        Err(_) => {}
    }
});
