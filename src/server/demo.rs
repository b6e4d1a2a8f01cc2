//! The demo page (PRODUCT.md 14): with the development tenant, `GET /demo` serves a small
//! collaborative editor (`demo/index.html`) and `/demo/demo.js` its script, which build.rs
//! bundled from npm packages (Tiptap, yjs, y-websocket). The page asks this node for a
//! development token and connects back to it. With configured tenants there is no demo: its
//! tokens would be anyone's.

use crate::http::response::response;
use crate::refusal::Refusal;

const PAGE: &str = include_str!("../../demo/index.html");

#[cfg(demo_bundle)]
const SCRIPT: Option<&str> = Some(include_str!(concat!(env!("OUT_DIR"), "/demo.js")));
#[cfg(not(demo_bundle))]
const SCRIPT: Option<&str> = None;

/// The answer to `path` (`/demo`, `/demo/` or `/demo/demo.js`); `development`: whether
/// the node runs the development tenant.
pub fn answer(path: &str, development: bool) -> Vec<u8> {
    if !development {
        return Refusal::NotFound.http_response();
    }
    match (path, SCRIPT) {
        ("/demo/demo.js", Some(script)) => {
            response(200, "text/javascript; charset=utf-8", &[], script)
        }
        ("/demo/demo.js", None) => Refusal::NotFound.http_response(),
        (_, Some(_)) => response(200, "text/html; charset=utf-8", &[], PAGE),
        (_, None) => response(
            503,
            "text/plain; charset=utf-8",
            &[],
            "The demo page was not built: this binary was built without Node.js and npm. Install them (Node 20 or newer), run `cargo build --release` again, and reload.\n",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(bytes: &[u8]) -> &str {
        std::str::from_utf8(&bytes[9..12]).unwrap()
    }

    #[test]
    fn only_with_the_development_tenant() {
        assert_eq!(status(&answer("/demo", false)), "404");
        assert_eq!(status(&answer("/demo/demo.js", false)), "404");
        let page = answer("/demo", true);
        if SCRIPT.is_some() {
            assert_eq!(status(&page), "200");
            assert!(String::from_utf8_lossy(&page).contains("/demo/demo.js"));
            assert_eq!(status(&answer("/demo/demo.js", true)), "200");
        } else {
            eprintln!("NOT BUILT: the demo bundle (no Node.js or npm when building)");
            assert_eq!(status(&page), "503");
        }
    }
}
