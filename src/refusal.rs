//! Every refusal the server sends, and the one place its close code or HTTP status is
//! decided. Modules report why (a frame error, a token refusal, a room's refusal, a limit);
//! [`Refusal::wire`] says what the client is told; [`CODES`] lists every code it can give,
//! which is what `/metrics` counts refusals by.

use crate::auth::oauth::OAuthError;
use crate::auth::verify::Refusal as TokenRefusal;
use crate::http::request::HttpError;
use crate::http::response::json_error;
use crate::sync::awareness::AwarenessError;
use crate::sync::hocuspocus::HocuspocusError;
use crate::sync::protocol::ProtocolError;
use crate::sync::side_message::SideError;
use crate::sync::update_check::UpdateError;
use crate::ws::close::{
    CloseError, GOING_AWAY, INTERNAL_ERROR, INVALID_PAYLOAD, MESSAGE_TOO_BIG, POLICY_VIOLATION,
    PROTOCOL_ERROR, SERVICE_RESTART, TRY_AGAIN_LATER, UNSUPPORTED_DATA,
};
use crate::ws::frame::FrameError;
use crate::ws::handshake::HandshakeError;
use crate::ws::message::MessageError;
use std::borrow::Cow;

/// WireSocket's application close codes (PRODUCT.md 5 and 6).
pub const MISSING_TOKEN: u16 = 4001;
pub const INVALID_TOKEN: u16 = 4002;
pub const FORBIDDEN: u16 = 4003;
pub const CONNECTION_LIMIT: u16 = 4004;
pub const DOCUMENT_LIMIT: u16 = 4005;
pub const RATE_LIMIT: u16 = 4006;
pub const INVALID_NAME: u16 = 4007;
pub const USERS_PER_DOCUMENT_LIMIT: u16 = 4008;
pub const REDIRECT: u16 = 4009;

/// Every HTTP status and close code a refusal can carry.
#[rustfmt::skip]
pub const CODES: [u16; 33] = [
    400, 401, 403, 404, 405, 408, 411, 413, 426, 429, 431, 500, 501, 503, 505,
    1001, 1002, 1003, 1007, 1008, 1009, 1011, 1012, 1013,
    MISSING_TOKEN, INVALID_TOKEN, FORBIDDEN, CONNECTION_LIMIT, DOCUMENT_LIMIT, RATE_LIMIT,
    INVALID_NAME, USERS_PER_DOCUMENT_LIMIT, REDIRECT,
];

/// Why a request, an upgrade or a session is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    // Plain HTTP, before any upgrade.
    Http(HttpError),
    /// The request head (or body) did not arrive within `http.request_timeout_ms`.
    RequestTimeout,
    Handshake(HandshakeError),
    NotFound,
    MethodNotAllowed,
    Draining,
    Overloaded,
    /// Client sockets have taken the descriptors kept back for answering: refused before
    /// the request is read.
    OutOfSockets,
    /// Too many tokens or client secrets wait to be checked on this shard.
    VerifierBusy,
    /// A per-IP budget.
    RateLimited,
    /// `Origin` is not among the token's `allowed_domain_*` claims.
    OriginForbidden,

    // The plain API.
    ApiMissingToken,
    ApiInvalidToken(TokenRefusal),
    InvalidRequest(Cow<'static, str>),
    ApiForbidden(&'static str),
    LengthRequired,
    BodyTooLarge,
    UnknownTenant,
    ApiRegistryUnavailable,
    /// The token endpoint's OAuth 2 errors (their body is `auth::oauth`'s).
    OAuth(OAuthError),

    // After the 101: admission.
    MissingToken,
    Token(TokenRefusal),
    /// A document name with the isolation key's separator.
    NameHasSeparator,
    InvalidName(&'static str),
    /// The token's `docs` claim does not grant the document.
    DocNotGranted,
    ConnectionLimit(u64),
    DocumentLimit {
        limit: u64,
        active: u64,
    },
    /// `opsPerMinute`.
    OpsLimit(u64),
    UsersPerDocument(u64),
    /// The document is pinned to another node: `REDIRECT:{url}/{doc}` or the region.
    Redirect(String),
    RegistryUnavailable,
    /// The app's load hook gave no state for the starting session (PRODUCT.md 9.2).
    DocumentNotLoaded,
    /// The app's authorization callback said no, with its reason (PRODUCT.md 9.4).
    NotAuthorized(String),
    /// The app's authorization callback gave no decision in time (or a 5xx, or a malformed
    /// answer): never taken for a yes.
    AuthorizationUnavailable,
    /// A design comment the app's full webhook queue could not take (not shown to anyone).
    CommentNotTaken,

    // In a session.
    Frame(FrameError),
    Message(MessageError),
    BadClose(CloseError),
    Protocol(ProtocolError),
    Awareness(AwarenessError),
    /// A JSON side message (PRODUCT.md 9.3) that is not one.
    SideMessage(SideError),
    /// The update decoded but yrs could not integrate it.
    Integrate,
    DocumentTooLarge,
    /// A text frame on a document connection.
    NotBinary,
    /// `websocket.messages_per_second`.
    MessageRate(u32),
    MessageTimeout,
    /// The node holds `websocket.incomplete_bytes_max` of incomplete messages.
    IncompleteBytes,
    /// The node is past `node.memory_budget_bytes`: no document changes.
    OutOfMemory,
    Idle,
    SlowConsumer,
    /// The client took none of what was sent to it for `websocket.message_timeout_ms`.
    NotReading,
    /// A panic while handling the connection's message.
    Panicked,
    /// A panic while the request was answered or admitted (before any 101).
    AdmissionPanicked,
    /// The document was reset after a panic in its handling.
    DocumentReset,
    /// The node drains.
    Restart,
    /// An operator closed the document (`POST /admin/documents/{app}/{name}/close`).
    ClosedByOperator,

    // The Hocuspocus framing.
    Hocuspocus(HocuspocusError),
    /// More documents on one socket than `hocuspocus.documents_max`.
    HocuspocusDocuments(usize),
    /// More session addresses (`name\0session`) of one document on one Hocuspocus socket.
    SessionsPerDocument(usize),
    /// A linked socket sent its document more than its owner could hold while behind.
    LinkBacklog,
    /// A Hocuspocus socket named no document it could open within `hocuspocus.auth_timeout_ms`.
    AuthTimeout(u64),
    /// More queued before their documents' tokens than `hocuspocus.pending_*_max`.
    HocuspocusQueue {
        messages_max: usize,
        bytes_max: usize,
    },
}

/// What the client is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wire {
    /// An HTTP answer with a JSON error body `{"error", "message"}`.
    Http {
        status: u16,
        error: &'static str,
        message: Cow<'static, str>,
    },
    /// A close frame (after the 101, or in a session).
    Close {
        code: u16,
        reason: Cow<'static, str>,
    },
}

const MISSING_TOKEN_REASON: &str =
    "Authentication required: pass a token as ?token=, the access_token subprotocol or Authorization: Bearer";

impl Refusal {
    pub fn wire(&self) -> Wire {
        use Refusal::*;
        let http = |status, error, message: &'static str| Wire::Http {
            status,
            error,
            message: message.into(),
        };
        let close = |code, reason: Cow<'static, str>| Wire::Close { code, reason };
        match self {
            Http(e) => {
                let (status, message) = match e {
                    HttpError::Malformed => (400, "not an HTTP/1.1 request"),
                    HttpError::HeadTooLarge => (431, "request head too large"),
                    HttpError::VersionNotSupported => (505, "use HTTP/1.1"),
                    HttpError::BadContentLength => (
                        400,
                        "Content-Length must be given once, as digits only (RFC 9112 section 6.3)",
                    ),
                    HttpError::LengthAndEncoding => (
                        400,
                        "send either Content-Length or Transfer-Encoding, not both (RFC 9112 section 6.3)",
                    ),
                    // RFC 9112 section 6.1: a transfer coding the server does not implement
                    // ought to get 501. Requests have none here (the only body, the token
                    // form, is small and must say its length); 501 says the refusal is about
                    // the coding, not a malformed request.
                    HttpError::TransferEncoding => (
                        501,
                        "Transfer-Encoding is not supported on requests: send the body with a Content-Length",
                    ),
                };
                http(status, "bad_request", message)
            }
            RequestTimeout => http(408, "request_timeout", "send the whole request sooner"),
            Handshake(e) => {
                let status = match e {
                    HandshakeError::Method => 405,
                    HandshakeError::NotAnUpgrade | HandshakeError::Version => 426,
                    HandshakeError::Key => 400,
                };
                http(status, "upgrade_required", e.message())
            }
            NotFound => http(404, "not_found", "no such endpoint"),
            MethodNotAllowed => http(
                405,
                "method_not_allowed",
                "see the API documentation for the method",
            ),
            Draining => http(
                503,
                "unavailable",
                "this node is restarting: connect again shortly",
            ),
            Overloaded => http(503, "unavailable", "this node is at capacity: retry later"),
            OutOfSockets => http(
                503,
                "unavailable",
                "this node is out of connections: retry later",
            ),
            VerifierBusy => http(
                503,
                "unavailable",
                "this node is busy checking credentials: retry later",
            ),
            RateLimited => http(
                429,
                "rate_limited",
                "too many requests from this address: retry in 60 s",
            ),
            OriginForbidden => http(
                403,
                "forbidden_origin",
                "this token is not valid for the page's origin (allowed_domain claims)",
            ),
            ApiMissingToken => http(
                401,
                "missing_token",
                "send Authorization: Bearer JWT or ?token=JWT",
            ),
            ApiInvalidToken(t) => Wire::Http {
                status: 401,
                error: "invalid_token",
                message: t.reason().into(),
            },
            InvalidRequest(message) => Wire::Http {
                status: 400,
                error: "invalid_request",
                message: message.clone(),
            },
            ApiForbidden(why) => http(403, "forbidden", why),
            LengthRequired => http(
                411,
                "length_required",
                "send the form with a Content-Length",
            ),
            BodyTooLarge => http(413, "invalid_request", "the form is too large"),
            UnknownTenant => http(404, "not_found", "no such tenant"),
            ApiRegistryUnavailable => http(
                503,
                "unavailable",
                "the registry did not answer: try again shortly",
            ),
            OAuth(e) => {
                // RFC 6749 5.2 has 401 for invalid_client; invalid_grant has been 401 here
                // since the endpoint's first release, and clients may rely on it.
                let status = match e {
                    OAuthError::InvalidClient | OAuthError::InvalidGrant => 401,
                    OAuthError::ServerError => 500,
                    OAuthError::TemporarilyUnavailable => 503,
                    OAuthError::InvalidRequest
                    | OAuthError::UnsupportedGrantType
                    | OAuthError::InvalidScope => 400,
                };
                http(status, e.code(), "see error_description")
            }
            MissingToken => close(MISSING_TOKEN, MISSING_TOKEN_REASON.into()),
            Token(t) => {
                let code = match t {
                    TokenRefusal::Invalid(_) => INVALID_TOKEN,
                    TokenRefusal::Forbidden(_) => FORBIDDEN,
                };
                close(code, t.reason().into())
            }
            NameHasSeparator => close(FORBIDDEN, "Forbidden: document name contains '::'".into()),
            InvalidName(why) => close(INVALID_NAME, format!("Invalid document name: {why}").into()),
            DocNotGranted => close(
                FORBIDDEN,
                "Forbidden: the token does not grant this document".into(),
            ),
            ConnectionLimit(limit) => close(
                CONNECTION_LIMIT,
                format!("Connection limit exceeded: {limit}").into(),
            ),
            DocumentLimit { limit, active } => close(
                DOCUMENT_LIMIT,
                format!("Document limit exceeded: {limit} (active: {active})").into(),
            ),
            OpsLimit(limit) => close(
                RATE_LIMIT,
                format!("Rate limit exceeded: {limit} ops/min").into(),
            ),
            UsersPerDocument(limit) => close(
                USERS_PER_DOCUMENT_LIMIT,
                format!("Document user limit exceeded: {limit}").into(),
            ),
            Redirect(reason) => close(REDIRECT, reason.clone().into()),
            RegistryUnavailable => close(
                TRY_AGAIN_LATER,
                "Service unavailable: the registry did not answer, try again later".into(),
            ),
            NotAuthorized(reason) => close(FORBIDDEN, format!("Forbidden: {reason}").into()),
            AuthorizationUnavailable => close(
                TRY_AGAIN_LATER,
                "Service unavailable: the application did not authorize the connection, try again later"
                    .into(),
            ),
            DocumentNotLoaded => close(
                TRY_AGAIN_LATER,
                "Service unavailable: the application did not load the document, try again later"
                    .into(),
            ),
            CommentNotTaken => close(
                TRY_AGAIN_LATER,
                "Service unavailable: the app's webhook queue is full; the comment was not taken, try again later".into(),
            ),
            Frame(e) => {
                let code = match e {
                    FrameError::TooLarge => MESSAGE_TOO_BIG,
                    _ => PROTOCOL_ERROR,
                };
                close(code, e.reason().into())
            }
            Message(e) => {
                let code = match e {
                    MessageError::UnexpectedFragment => PROTOCOL_ERROR,
                    MessageError::TooLarge | MessageError::TooManyFragments => MESSAGE_TOO_BIG,
                    MessageError::InvalidUtf8 => INVALID_PAYLOAD,
                };
                close(code, e.reason().into())
            }
            BadClose(e) => {
                let code = match e {
                    CloseError::ReasonNotUtf8 => INVALID_PAYLOAD,
                    CloseError::Truncated | CloseError::InvalidCode(_) => PROTOCOL_ERROR,
                };
                close(code, "invalid close frame".into())
            }
            Protocol(e) => {
                let code = match e {
                    ProtocolError::UnknownType => UNSUPPORTED_DATA,
                    ProtocolError::Update(UpdateError::TooManyStructs) => MESSAGE_TOO_BIG,
                    _ => INVALID_PAYLOAD,
                };
                close(code, e.reason().into())
            }
            Awareness(e) => {
                let code = match e {
                    AwarenessError::StateTooLarge => MESSAGE_TOO_BIG,
                    AwarenessError::TooManyClientsForConnection
                    | AwarenessError::TooManyClientsForRoom
                    | AwarenessError::RepeatedClient => POLICY_VIOLATION,
                };
                close(code, e.reason().into())
            }
            SideMessage(e) => {
                let code = match e {
                    SideError::TooLarge => MESSAGE_TOO_BIG,
                    _ => INVALID_PAYLOAD,
                };
                close(code, e.reason().into())
            }
            Integrate => close(INVALID_PAYLOAD, "update could not be applied".into()),
            DocumentTooLarge => close(
                MESSAGE_TOO_BIG,
                "document too large: this update would take it past the server's size limit".into(),
            ),
            NotBinary => close(
                UNSUPPORTED_DATA,
                "Hocuspocus connections take binary messages".into(),
            ),
            MessageRate(per_second) => close(
                POLICY_VIOLATION,
                format!("message rate exceeded: at most {per_second} messages per second").into(),
            ),
            MessageTimeout => close(
                POLICY_VIOLATION,
                "message timeout: a frame or message stopped arriving".into(),
            ),
            IncompleteBytes => close(
                TRY_AGAIN_LATER,
                "server busy: too many large messages in flight, try again later".into(),
            ),
            OutOfMemory => close(
                TRY_AGAIN_LATER,
                "server out of memory: keep the edit and try again later".into(),
            ),
            Idle => close(
                GOING_AWAY,
                "idle timeout: nothing received for too long".into(),
            ),
            SlowConsumer => close(
                POLICY_VIOLATION,
                "outbound buffer full: client too slow, reconnect to resync".into(),
            ),
            NotReading => close(
                POLICY_VIOLATION,
                "client stopped reading: reconnect to resync".into(),
            ),
            AdmissionPanicked => http(
                500,
                "internal_error",
                "the server failed on this request: try again",
            ),
            Panicked => close(
                INTERNAL_ERROR,
                "internal error handling this message".into(),
            ),
            DocumentReset => close(
                INTERNAL_ERROR,
                "document reset after an internal error: reconnect".into(),
            ),
            Restart => close(SERVICE_RESTART, "service restart: reconnect".into()),
            ClosedByOperator => close(
                FORBIDDEN,
                "Forbidden: document closed by the operator".into(),
            ),
            Hocuspocus(e) => {
                let code = match e {
                    HocuspocusError::NotFromClient(_) => POLICY_VIOLATION,
                    HocuspocusError::TooLong => MESSAGE_TOO_BIG,
                    HocuspocusError::Decode(_) | HocuspocusError::Address => INVALID_PAYLOAD,
                };
                close(code, e.reason().into())
            }
            SessionsPerDocument(max) => close(
                POLICY_VIOLATION,
                format!("too many sessions of one document on one socket: at most {max}").into(),
            ),
            LinkBacklog => close(
                TRY_AGAIN_LATER,
                "document busy: sent faster than it can be applied, try again later".into(),
            ),
            AuthTimeout(ms) => close(
                POLICY_VIOLATION,
                format!("no document authenticated within {ms} ms: send a token with the first message").into(),
            ),
            HocuspocusDocuments(max) => close(
                POLICY_VIOLATION,
                format!("too many documents on one socket: at most {max}").into(),
            ),
            HocuspocusQueue {
                messages_max,
                bytes_max,
            } => close(
                POLICY_VIOLATION,
                format!(
                    "too much queued before a document's token: at most {messages_max} messages, {bytes_max} bytes"
                )
                .into(),
            ),
        }
    }

    /// The close code or HTTP status.
    pub fn code(&self) -> u16 {
        match self.wire() {
            Wire::Http { status, .. } => status,
            Wire::Close { code, .. } => code,
        }
    }

    /// The close code and reason; an HTTP refusal's status and message when it must be told
    /// after the 101.
    pub fn close(&self) -> (u16, Cow<'static, str>) {
        match self.wire() {
            Wire::Close { code, reason } => (code, reason),
            Wire::Http {
                status, message, ..
            } => (status, message),
        }
    }

    /// The complete HTTP answer: the JSON error, with the headers the status calls for.
    pub fn http_response(&self) -> Vec<u8> {
        let (status, error, message) = match self.wire() {
            Wire::Http {
                status,
                error,
                message,
            } => (status, error, message),
            Wire::Close { code, reason } => {
                unreachable!("close {code} ({reason}) has no HTTP answer")
            }
        };
        let retry_after;
        let extra: &[&str] = match self {
            Refusal::Handshake(HandshakeError::Version) => &["Sec-WebSocket-Version: 13"],
            Refusal::Handshake(HandshakeError::Method) => &["Allow: GET"],
            Refusal::RateLimited => &["Retry-After: 60"],
            Refusal::ApiRegistryUnavailable => &["Retry-After: 60"],
            // Jittered, so that refused clients do not all come back at once.
            _ if status == 503 => {
                retry_after = format!("Retry-After: {}", 30 + rand::random::<u64>() % 11);
                &[retry_after.as_str()]
            }
            _ => &[],
        };
        json_error(status, error, &message, extra)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One of every kind of refusal.
    fn every_kind() -> Vec<Refusal> {
        use Refusal::*;
        let mut all = vec![
            Http(HttpError::Malformed),
            Http(HttpError::HeadTooLarge),
            Http(HttpError::VersionNotSupported),
            Http(HttpError::BadContentLength),
            Http(HttpError::LengthAndEncoding),
            Http(HttpError::TransferEncoding),
            OutOfSockets,
            RequestTimeout,
            Handshake(HandshakeError::Method),
            Handshake(HandshakeError::NotAnUpgrade),
            Handshake(HandshakeError::Version),
            Handshake(HandshakeError::Key),
            NotFound,
            MethodNotAllowed,
            Draining,
            Overloaded,
            VerifierBusy,
            RateLimited,
            OriginForbidden,
            ApiMissingToken,
            ApiInvalidToken(TokenRefusal::Invalid("expired")),
            InvalidRequest("x".into()),
            ApiForbidden("x"),
            LengthRequired,
            BodyTooLarge,
            UnknownTenant,
            ApiRegistryUnavailable,
            OAuth(OAuthError::InvalidRequest),
            OAuth(OAuthError::UnsupportedGrantType),
            OAuth(OAuthError::InvalidClient),
            OAuth(OAuthError::InvalidGrant),
            OAuth(OAuthError::InvalidScope),
            OAuth(OAuthError::ServerError),
            OAuth(OAuthError::TemporarilyUnavailable),
            MissingToken,
            Token(TokenRefusal::Invalid("expired")),
            Token(TokenRefusal::Forbidden("app disabled")),
            NameHasSeparator,
            InvalidName("too long"),
            DocNotGranted,
            ConnectionLimit(1),
            DocumentLimit {
                limit: 1,
                active: 1,
            },
            OpsLimit(1),
            UsersPerDocument(1),
            Redirect("REDIRECT:ws://a/b".into()),
            RegistryUnavailable,
            DocumentNotLoaded,
            NotAuthorized("x".repeat(crate::webhook::authorize::REASON_BYTES_MAX)),
            AuthorizationUnavailable,
            CommentNotTaken,
            BadClose(CloseError::Truncated),
            BadClose(CloseError::ReasonNotUtf8),
            Protocol(ProtocolError::UnknownType),
            Protocol(ProtocolError::Update(UpdateError::TooManyStructs)),
            Protocol(ProtocolError::AwarenessNotJson),
            Awareness(AwarenessError::StateTooLarge),
            Awareness(AwarenessError::TooManyClientsForRoom),
            Awareness(AwarenessError::RepeatedClient),
            SideMessage(SideError::TooLarge),
            SideMessage(SideError::NotAnObject),
            SideMessage(SideError::UnknownComment),
            SideMessage(SideError::UnknownField("x".repeat(32))),
            Integrate,
            DocumentTooLarge,
            NotBinary,
            MessageRate(1),
            MessageTimeout,
            IncompleteBytes,
            OutOfMemory,
            Idle,
            SlowConsumer,
            NotReading,
            Panicked,
            AdmissionPanicked,
            DocumentReset,
            Restart,
            ClosedByOperator,
            Hocuspocus(HocuspocusError::Address),
            Hocuspocus(HocuspocusError::NotFromClient(6)),
            Hocuspocus(HocuspocusError::TooLong),
            HocuspocusDocuments(100),
            LinkBacklog,
            SessionsPerDocument(usize::MAX),
            AuthTimeout(u64::MAX),
            HocuspocusQueue {
                messages_max: usize::MAX,
                bytes_max: usize::MAX,
            },
        ];
        all.extend(
            [
                FrameError::ReservedBits,
                FrameError::ReservedOpcode,
                FrameError::Unmasked,
                FrameError::BadControlFrame,
                FrameError::LengthOverflow,
                FrameError::TooLarge,
            ]
            .map(Frame),
        );
        all.extend(
            [
                MessageError::UnexpectedFragment,
                MessageError::TooLarge,
                MessageError::TooManyFragments,
                MessageError::InvalidUtf8,
            ]
            .map(Message),
        );
        all
    }

    #[test]
    fn every_code_is_listed_for_the_metrics_and_every_listed_code_is_used() {
        let used: Vec<u16> = every_kind().iter().map(Refusal::code).collect();
        for code in &used {
            assert!(CODES.contains(code), "{code} is not in CODES");
        }
        for code in CODES {
            assert!(
                used.contains(&code),
                "{code} is listed but nothing refuses with it"
            );
        }
    }

    #[test]
    fn http_refusals_answer_http_and_close_refusals_fit_a_close_frame() {
        for refusal in every_kind() {
            match refusal.wire() {
                Wire::Http { status, .. } => {
                    assert!((400..600).contains(&status), "{refusal:?}");
                    let bytes = refusal.http_response();
                    let head = String::from_utf8_lossy(&bytes);
                    assert!(head.starts_with(&format!("HTTP/1.1 {status} ")), "{head}");
                }
                Wire::Close { code, reason } => {
                    assert!(crate::ws::close::is_valid_on_wire(code), "{refusal:?}");
                    assert!(
                        reason.len() <= crate::ws::close::REASON_BYTES_MAX,
                        "{refusal:?}"
                    );
                }
            }
        }
    }

    /// Every HTTP status the server sends has its RFC reason phrase: each refusal's, and
    /// the two successes (101 is the upgrade, 200 every answer).
    #[test]
    fn every_status_sent_has_its_rfc_phrase() {
        // RFC 9110 section 15, RFC 6585 (429, 431): written out here, apart from the table.
        const RFC: &[(u16, &str)] = &[
            (101, "Switching Protocols"),
            (200, "OK"),
            (400, "Bad Request"),
            (401, "Unauthorized"),
            (403, "Forbidden"),
            (404, "Not Found"),
            (405, "Method Not Allowed"),
            (408, "Request Timeout"),
            (411, "Length Required"),
            (413, "Content Too Large"),
            (426, "Upgrade Required"),
            (429, "Too Many Requests"),
            (431, "Request Header Fields Too Large"),
            (500, "Internal Server Error"),
            (501, "Not Implemented"),
            (503, "Service Unavailable"),
            (505, "HTTP Version Not Supported"),
        ];
        let statuses = every_kind().into_iter().filter_map(|r| match r.wire() {
            Wire::Http { status, .. } => Some(status),
            Wire::Close { .. } => None,
        });
        for status in statuses.chain([101, 200]) {
            let expected = RFC.iter().find(|(s, _)| *s == status).map(|(_, p)| *p);
            assert_eq!(
                Some(crate::http::response::reason_phrase(status)),
                expected,
                "status {status}: add its RFC phrase"
            );
        }
    }

    #[test]
    fn the_documented_codes_and_reasons() {
        assert_eq!(
            Refusal::DocumentLimit {
                limit: 5,
                active: 5
            }
            .close(),
            (4005, "Document limit exceeded: 5 (active: 5)".into())
        );
        assert_eq!(
            Refusal::Token(TokenRefusal::Invalid("expired")).close(),
            (4002, "Invalid token: expired".into())
        );
        assert_eq!(Refusal::RegistryUnavailable.code(), 1013);
        assert_eq!(Refusal::Restart.code(), 1012);
        assert_eq!(Refusal::Frame(FrameError::TooLarge).code(), 1009);
        assert_eq!(Refusal::Http(HttpError::BadContentLength).code(), 400);
        assert_eq!(Refusal::Http(HttpError::LengthAndEncoding).code(), 400);
        assert_eq!(Refusal::Http(HttpError::TransferEncoding).code(), 501);
        let upgrade =
            String::from_utf8(Refusal::Handshake(HandshakeError::Version).http_response()).unwrap();
        assert!(
            upgrade.contains("Sec-WebSocket-Version: 13\r\n"),
            "{upgrade}"
        );
        let limited = String::from_utf8(Refusal::RateLimited.http_response()).unwrap();
        assert!(limited.contains("Retry-After: 60\r\n"), "{limited}");
    }
}
