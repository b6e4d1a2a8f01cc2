//! Where a connection's token comes from. In order: the subprotocol list
//! (`access_token, JWT` or `Bearer, JWT`), the query (`token` or `access_token`), the
//! `Authorization: Bearer` header.

use crate::http::request::Request;

/// Subprotocol markers a client may put before its token.
pub const MARKERS: [&str; 2] = ["access_token", "Bearer"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub token: String,
    /// The subprotocol marker used, which the 101 must select (never the token itself).
    pub marker: Option<&'static str>,
    /// From the documented `?token=JWT/doc` quirk: the document name that followed the token.
    pub document: Option<String>,
}

/// Finds the token. `None` when the request carries none (close 4001).
pub fn extract(req: &Request<'_>) -> Option<Found> {
    if let Some(found) = from_subprotocols(req) {
        return Some(found);
    }
    let query = ["token", "access_token"]
        .into_iter()
        .find_map(|name| req.query_param(name))
        .filter(|v| !v.is_empty())
        .and_then(crate::http::request::percent_decode);
    if let Some(value) = query {
        // `wss://host?token=JWT/doc`: a JWT never contains '/', so a '/' starts the name.
        if req.path == "/" {
            if let Some((token, doc)) = value.split_once('/') {
                return Some(Found {
                    token: token.to_owned(),
                    marker: None,
                    document: Some(doc.to_owned()),
                });
            }
        }
        return Some(Found {
            token: value,
            marker: None,
            document: None,
        });
    }
    let auth = req.header("authorization")?;
    let auth = std::str::from_utf8(auth).ok()?.trim();
    let (scheme, token) = auth.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty()).then(|| Found {
        token: token.trim().to_owned(),
        marker: None,
        document: None,
    })
}

fn from_subprotocols(req: &Request<'_>) -> Option<Found> {
    let offered = std::str::from_utf8(req.header("sec-websocket-protocol")?).ok()?;
    let mut items = offered.split(',').map(str::trim);
    let marker = items.next()?;
    let marker = MARKERS.into_iter().find(|m| *m == marker)?;
    let token = items.next().filter(|t| !t.is_empty())?;
    Some(Found {
        token: token.to_owned(),
        marker: Some(marker),
        document: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request::parse_request;

    fn find(raw: &str) -> Option<Found> {
        let req = parse_request(raw.as_bytes(), 8192).unwrap().unwrap();
        extract(&req)
    }

    #[test]
    fn every_transport_in_order() {
        let f =
            find("GET /d HTTP/1.1\r\nSec-WebSocket-Protocol: access_token, aaa.bbb.ccc\r\n\r\n")
                .unwrap();
        assert_eq!(
            (f.token.as_str(), f.marker),
            ("aaa.bbb.ccc", Some("access_token"))
        );
        let f = find("GET /d HTTP/1.1\r\nSec-WebSocket-Protocol: Bearer,x.y.z\r\n\r\n").unwrap();
        assert_eq!((f.token.as_str(), f.marker), ("x.y.z", Some("Bearer")));
        let f = find("GET /d?token=q.q.q HTTP/1.1\r\nAuthorization: Bearer h.h.h\r\n\r\n").unwrap();
        assert_eq!(f.token, "q.q.q", "query before header");
        let f = find("GET /d?access_token=a.a.a HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(f.token, "a.a.a");
        let f = find("GET /d HTTP/1.1\r\nAuthorization: Bearer h.h.h\r\n\r\n").unwrap();
        assert_eq!(f.token, "h.h.h");
        let f = find(
            "GET /d?token=q.q.q HTTP/1.1\r\nSec-WebSocket-Protocol: access_token, s.s.s\r\n\r\n",
        )
        .unwrap();
        assert_eq!(f.token, "s.s.s", "subprotocol first");
    }

    #[test]
    fn none_or_unusable() {
        assert!(find("GET /d HTTP/1.1\r\n\r\n").is_none());
        assert!(find("GET /d?token= HTTP/1.1\r\n\r\n").is_none());
        assert!(find("GET /d HTTP/1.1\r\nAuthorization: Basic abc\r\n\r\n").is_none());
        assert!(find("GET /d HTTP/1.1\r\nSec-WebSocket-Protocol: chat, x\r\n\r\n").is_none());
    }

    #[test]
    fn token_then_document_quirk() {
        let f = find("GET /?token=a.b.c/my-doc HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(
            (f.token.as_str(), f.document.as_deref()),
            ("a.b.c", Some("my-doc"))
        );
        let f = find("GET /other?token=a.b.c/my-doc HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(f.document, None);
    }
}
