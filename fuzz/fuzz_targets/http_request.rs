//! The request head parser (body framing included), the upgrade checks, token extraction
//! and the `X-Forwarded-For` walk.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::net::{IpAddr, Ipv4Addr};
use wiresocket::auth::transport;
use wiresocket::http::ip_rate::{client_ip, Cidr};
use wiresocket::http::request::{parse_request, percent_decode};
use wiresocket::ws::handshake::check_upgrade;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(req)) = parse_request(data, 8192) {
        let _ = check_upgrade(&req);
        let _ = transport::extract(&req);
        let _ = percent_decode(req.path);
        // Every hop trusted: the walk reads every entry the client wrote.
        let everyone: [Cidr; 2] = ["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()];
        let peer = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let _ = client_ip(peer, req.headers_named("x-forwarded-for"), &everyone);
    }
});
