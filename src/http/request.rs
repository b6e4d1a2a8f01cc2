//! Request parsing with hard limits, on top of httparse.

/// The most headers a request may carry; more is answered with 431.
pub const HEADER_COUNT_MAX: usize = 64;

/// A parsed request head, borrowing from the bytes read.
#[derive(Debug)]
pub struct Request<'b> {
    pub method: &'b str,
    /// The path, before any `?`; still percent-encoded.
    pub path: &'b str,
    /// The query string after `?`, if any.
    pub query: Option<&'b str>,
    pub headers: Vec<(&'b str, &'b [u8])>,
    /// Bytes of the request head, including the blank line.
    pub head_len: usize,
    /// The body's length from `Content-Length`, checked (see [`parse_request`]); `None`
    /// without one.
    pub content_length: Option<u64>,
}

/// Why a request is refused before routing (`refusal` says with which HTTP status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpError {
    /// Not HTTP/1.1 syntax.
    Malformed,
    /// The head is over the configured byte limit or has too many headers.
    HeadTooLarge,
    /// HTTP/1.0 and older cannot upgrade.
    VersionNotSupported,
    /// A `Content-Length` that is not one run of digits, or more than one of them.
    BadContentLength,
    /// Both `Transfer-Encoding` and `Content-Length`: the two framings could disagree (a
    /// request-smuggling attempt, RFC 9112 section 6.3, item 3).
    LengthAndEncoding,
    /// A `Transfer-Encoding` on a request: no endpoint takes a coded body.
    TransferEncoding,
}

impl<'b> Request<'b> {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'b [u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }

    /// Every header named `name` (case-insensitive), in the order received: lists such as
    /// `X-Forwarded-For` may span several lines.
    pub fn headers_named<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'b [u8]> + 's {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }

    /// Whether any `name` header holds `token` in its comma-separated list (case-insensitive),
    /// as `Connection: keep-alive, Upgrade` does.
    pub fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers_named(name)
            .flat_map(|v| v.split(|&b| b == b','))
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    }

    /// The value of query parameter `name`, still percent-encoded.
    pub fn query_param(&self, name: &str) -> Option<&'b str> {
        self.query?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then_some(v)
        })
    }
}

/// Parses a request head from `buf`. `Ok(None)`: incomplete, read more (unless `buf` is
/// already `head_bytes_max` long, which is an error).
pub fn parse_request(buf: &[u8], head_bytes_max: usize) -> Result<Option<Request<'_>>, HttpError> {
    let mut storage = [httparse::EMPTY_HEADER; HEADER_COUNT_MAX];
    let mut req = httparse::Request::new(&mut storage);
    let status = match req.parse(buf) {
        Ok(status) => status,
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HeadTooLarge),
        Err(httparse::Error::Version) => return Err(HttpError::VersionNotSupported),
        Err(_) => return Err(HttpError::Malformed),
    };
    let head_len = match status {
        httparse::Status::Complete(n) if n <= head_bytes_max => n,
        httparse::Status::Complete(_) => return Err(HttpError::HeadTooLarge),
        httparse::Status::Partial if buf.len() >= head_bytes_max => {
            return Err(HttpError::HeadTooLarge)
        }
        httparse::Status::Partial => return Ok(None),
    };
    if req.version != Some(1) {
        return Err(HttpError::VersionNotSupported);
    }
    let method = req.method.ok_or(HttpError::Malformed)?;
    let target = req.path.ok_or(HttpError::Malformed)?;
    if !target.starts_with('/') {
        return Err(HttpError::Malformed);
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let headers: Vec<(&str, &[u8])> = req.headers.iter().map(|h| (h.name, h.value)).collect();
    let content_length = body_framing(&headers)?;
    Ok(Some(Request {
        method,
        path,
        query,
        headers,
        head_len,
        content_length,
    }))
}

/// The body length a request declares, refusing every framing two parties could read
/// differently (RFC 9112 section 6.3). Checked for every request, not only those with a
/// body we read: bytes after an upgrade's head are read as frames, so a request whose
/// framing is ambiguous must not get that far.
fn body_framing(headers: &[(&str, &[u8])]) -> Result<Option<u64>, HttpError> {
    let named = |name: &'static str| {
        headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    };
    let mut lengths = named("content-length");
    let length = lengths.next();
    // RFC 9112 allows several Content-Length fields (or a list) with one identical value;
    // we refuse any repetition, since a proxy in front may have kept a different one.
    if lengths.next().is_some() {
        return Err(HttpError::BadContentLength);
    }
    if named("transfer-encoding").next().is_some() {
        return Err(match length {
            Some(_) => HttpError::LengthAndEncoding,
            None => HttpError::TransferEncoding,
        });
    }
    length.map(content_length).transpose()
}

/// `Content-Length = 1*DIGIT` (RFC 9110 section 8.6): no sign, no spaces, no list, and not
/// past `u64`. (httparse has already dropped the optional whitespace around a field value.)
fn content_length(value: &[u8]) -> Result<u64, HttpError> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Err(HttpError::BadContentLength);
    }
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or(HttpError::BadContentLength)
}

/// Percent-decodes `s` into UTF-8. `None` for a bad escape or bytes that are not UTF-8.
/// `s` as one path segment or query value: everything but RFC 3986's unreserved
/// characters percent-encoded (`percent_decode` gives it back).
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_owned());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn percent_encoding_round_trips_and_leaves_no_separator() {
        for s in ["plain-1.x~", "a b/c?d&e=f%g", "a:b::c", "é☃", ""] {
            let encoded = super::percent_encode(s);
            assert!(!encoded.contains(['/', '?', '&', ' ', ':']), "{encoded}");
            assert_eq!(super::percent_decode(&encoded).as_deref(), Some(s));
        }
    }

    use super::*;

    const MAX: usize = 8192;

    #[test]
    fn parses_a_websocket_upgrade() {
        let raw = b"GET /my-doc?token=abc&x=1 HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\r\nextra";
        let req = parse_request(raw, MAX).unwrap().unwrap();
        assert_eq!(req.method, "GET");
        assert_eq!(req.path, "/my-doc");
        assert_eq!(req.query_param("token"), Some("abc"));
        assert_eq!(req.query_param("x"), Some("1"));
        assert_eq!(req.query_param("y"), None);
        assert!(req.header_has_token("connection", "upgrade"));
        assert_eq!(req.header("UPGRADE"), Some(&b"websocket"[..]));
        assert_eq!(&raw[req.head_len..], b"extra");
    }

    #[test]
    fn repeated_headers_come_in_order() {
        let raw = b"GET / HTTP/1.1\r\nX-Forwarded-For: 1.1.1.1\r\nHost: a\r\nx-forwarded-for: 2.2.2.2, 3.3.3.3\r\n\r\n";
        let req = parse_request(raw, MAX).unwrap().unwrap();
        let lines: Vec<&[u8]> = req.headers_named("X-Forwarded-For").collect();
        assert_eq!(lines, [&b"1.1.1.1"[..], &b"2.2.2.2, 3.3.3.3"[..]]);
    }

    #[test]
    fn incomplete_heads_ask_for_more_until_the_limit() {
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\n";
        assert!(parse_request(raw, MAX).unwrap().is_none());
        assert_eq!(
            parse_request(raw, raw.len()).unwrap_err(),
            HttpError::HeadTooLarge
        );
    }

    #[test]
    fn too_many_headers_is_431() {
        let mut raw = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=HEADER_COUNT_MAX {
            raw.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        let err = parse_request(&raw, 1 << 20).unwrap_err();
        assert_eq!(err, HttpError::HeadTooLarge);
    }

    #[test]
    fn refuses_garbage_and_old_versions() {
        assert_eq!(
            parse_request(b"\x16\x03\x01\x00", MAX).unwrap_err(),
            HttpError::Malformed
        );
        assert_eq!(
            parse_request(b"GET / HTTP/1.0\r\n\r\n", MAX).unwrap_err(),
            HttpError::VersionNotSupported
        );
        assert_eq!(
            parse_request(b"GET * HTTP/1.1\r\n\r\n", MAX).unwrap_err(),
            HttpError::Malformed
        );
    }

    fn framing(headers: &str) -> Result<Option<u64>, HttpError> {
        let raw = format!("POST /connect/token HTTP/1.1\r\nHost: a\r\n{headers}\r\n");
        parse_request(raw.as_bytes(), MAX).map(|r| r.unwrap().content_length)
    }

    #[test]
    fn content_length_is_one_run_of_digits() {
        assert_eq!(framing(""), Ok(None));
        assert_eq!(framing("Content-Length: 0\r\n"), Ok(Some(0)));
        assert_eq!(framing("content-length: 0042\r\n"), Ok(Some(42)));
        // Whitespace around a value is not part of it (RFC 9110 section 5.5).
        assert_eq!(framing("Content-Length:   7  \r\n"), Ok(Some(7)));
        for bad in [
            "+5",
            "-1",
            "0x5",
            "5,5",
            "5 5",
            "",
            "1e3",
            "18446744073709551616",
        ] {
            let header = format!("Content-Length: {bad}\r\n");
            assert_eq!(
                framing(&header),
                Err(HttpError::BadContentLength),
                "{bad:?}"
            );
        }
        for bad in [" 5", "5 ", "\t5"] {
            assert_eq!(
                content_length(bad.as_bytes()),
                Err(HttpError::BadContentLength),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn repeated_lengths_and_transfer_codings_are_refused() {
        // Even two equal values: refusing is the safe reading (see body_framing).
        assert_eq!(
            framing("Content-Length: 5\r\nContent-Length: 5\r\n"),
            Err(HttpError::BadContentLength)
        );
        assert_eq!(
            framing("Content-Length: 5\r\nContent-Length: 6\r\n"),
            Err(HttpError::BadContentLength)
        );
        let both = framing("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n");
        assert_eq!(both, Err(HttpError::LengthAndEncoding));
        let coded = framing("Transfer-Encoding: chunked\r\n");
        assert_eq!(coded, Err(HttpError::TransferEncoding));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Fb").as_deref(), Some("a/b"));
        assert_eq!(percent_decode("plain").as_deref(), Some("plain"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%"), None);
        assert_eq!(percent_decode("%ff"), None);
    }
}
