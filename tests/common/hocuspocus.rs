//! A Hocuspocus client written here from the wire facts (`shared/spec/HOCUSPOCUS.md`),
//! over tungstenite, with a yrs document per address.

use super::{connect_raw, read_timed_out, var};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tungstenite::Message;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{GetString, ReadTxn, Text, Transact};

/// What the server said about one document.
#[derive(Default)]
pub struct DocState {
    pub doc: yrs::Doc,
    /// `Some("read-write" | "readonly")` once authenticated.
    pub scope: Option<String>,
    pub denied: Option<String>,
    pub closed: Option<String>,
    /// A sync step 2 arrived (the provider's "synced").
    pub synced: bool,
    pub applied: usize,
    pub refused: usize,
    pub awareness: usize,
    pub stateless: Vec<String>,
    /// The server asked for the token again (`02 00`).
    pub token_requests: usize,
}

pub struct HClient {
    pub ws: super::Ws,
    pub docs: HashMap<String, DocState>,
    /// v4 in-band pings (`09`) received.
    pub pings: usize,
}

pub fn var_string(out: &mut Vec<u8>, s: &[u8]) {
    var(out, s.len() as u64);
    out.extend_from_slice(s);
}

pub fn read_var(b: &[u8], pos: &mut usize) -> u64 {
    let (mut v, mut shift) = (0u64, 0);
    loop {
        let byte = b[*pos];
        *pos += 1;
        v |= ((byte & 0x7F) as u64) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            return v;
        }
    }
}

pub fn read_bytes<'a>(b: &'a [u8], pos: &mut usize) -> &'a [u8] {
    let n = read_var(b, pos) as usize;
    let out = &b[*pos..*pos + n];
    *pos += n;
    out
}

/// `varString(address) · type · body`.
pub fn message(address: &str, kind: u8, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    var_string(&mut m, address.as_bytes());
    m.push(kind);
    m.extend_from_slice(body);
    m
}

pub fn sync(address: &str, step: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = vec![step];
    var_string(&mut body, payload);
    message(address, 0, &body)
}

pub fn auth_token(address: &str, token: &str, version: Option<&str>) -> Vec<u8> {
    let mut body = vec![0];
    var_string(&mut body, token.as_bytes());
    if let Some(v) = version {
        var_string(&mut body, v.as_bytes());
    }
    message(address, 2, &body)
}

impl HClient {
    pub fn connect(addr: &str, path: &str) -> HClient {
        let ws = connect_raw(addr, path);
        ws.get_ref()
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        HClient {
            ws,
            docs: HashMap::new(),
            pings: 0,
        }
    }

    pub fn send(&mut self, m: Vec<u8>) {
        self.ws.send(Message::Binary(m.into())).unwrap();
    }

    /// Sends messages in one write, so that the server reads them together.
    pub fn send_together(&mut self, messages: Vec<Vec<u8>>) {
        for m in messages {
            self.ws.write(Message::Binary(m.into())).unwrap();
        }
        self.ws.flush().unwrap();
    }

    /// An update of `address` made now, not sent.
    pub fn edit(&mut self, address: &str, at: u32, s: &str) -> Vec<u8> {
        let d = &self.docs[address].doc;
        let t = d.get_or_insert_text("t");
        let mut txn = d.transact_mut();
        t.insert(&mut txn, at, s);
        sync(address, 2, &txn.encode_update_v1())
    }

    /// Attaches a document as the provider does: token, then step 1, without waiting.
    pub fn attach(&mut self, address: &str, token: &str, client_id: u64) {
        let state = DocState {
            doc: yrs::Doc::with_client_id(client_id),
            ..Default::default()
        };
        let sv = state.doc.transact().state_vector().encode_v1();
        self.docs.insert(address.to_owned(), state);
        self.send(auth_token(address, token, Some("4.8.0")));
        self.send(sync(address, 0, &sv));
    }

    pub fn doc(&self, address: &str) -> &DocState {
        &self.docs[address]
    }

    pub fn text(&self, address: &str) -> String {
        let d = &self.docs[address].doc;
        d.get_or_insert_text("t").get_string(&d.transact())
    }

    /// Inserts into the document and sends the update.
    pub fn insert(&mut self, address: &str, at: u32, s: &str) {
        let d = &self.docs[address].doc;
        let update = {
            let t = d.get_or_insert_text("t");
            let mut txn = d.transact_mut();
            t.insert(&mut txn, at, s);
            txn.encode_update_v1()
        };
        self.send(sync(address, 2, &update));
    }

    pub fn handle(&mut self, m: &[u8]) {
        if m == [9] {
            // As a v4 provider does: answered with a pong.
            self.pings += 1;
            self.send(vec![10]);
            return;
        }
        let mut pos = 0;
        let address = String::from_utf8(read_bytes(m, &mut pos).to_vec()).unwrap();
        let kind = read_var(m, &mut pos);
        let mut reply = None;
        let state = self
            .docs
            .get_mut(&address)
            .unwrap_or_else(|| panic!("a message for {address:?}, which is not attached"));
        match kind {
            0 => {
                let step = read_var(m, &mut pos);
                let payload = read_bytes(m, &mut pos);
                match step {
                    0 => {
                        let sv = yrs::StateVector::decode_v1(payload).unwrap();
                        let diff = state.doc.transact().encode_state_as_update_v1(&sv);
                        reply = Some(sync(&address, 1, &diff));
                    }
                    _ => {
                        let u = yrs::Update::decode_v1(payload).unwrap();
                        state.doc.transact_mut().apply_update(u).unwrap();
                        state.synced |= step == 1;
                    }
                }
            }
            1 => state.awareness += 1,
            2 => match read_var(m, &mut pos) {
                0 => {
                    assert_eq!(pos, m.len(), "a token request has no body");
                    state.token_requests += 1;
                }
                sub => {
                    let reason = String::from_utf8(read_bytes(m, &mut pos).to_vec()).unwrap();
                    match sub {
                        2 => state.scope = Some(reason),
                        1 => state.denied = Some(reason),
                        other => panic!("auth sub-type {other}"),
                    }
                }
            },
            5 => state
                .stateless
                .push(String::from_utf8(read_bytes(m, &mut pos).to_vec()).unwrap()),
            7 => state.closed = Some(String::from_utf8(read_bytes(m, &mut pos).to_vec()).unwrap()),
            8 => match read_var(m, &mut pos) {
                1 => state.applied += 1,
                0 => state.refused += 1,
                other => panic!("sync status {other}"),
            },
            other => panic!("message type {other}"),
        }
        if let Some(r) = reply {
            self.send(r);
        }
    }

    /// Handles messages until `f` holds; false at the timeout.
    pub fn pump_until(&mut self, timeout: Duration, mut f: impl FnMut(&HClient) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while !f(self) {
            if Instant::now() >= deadline {
                return false;
            }
            match self.ws.read() {
                Ok(Message::Binary(b)) => self.handle(&b),
                Ok(Message::Close(frame)) => panic!("socket closed: {frame:?}"),
                Ok(_) => {}
                Err(e) if read_timed_out(&e) => {}
                Err(e) => panic!("connection failed: {e}"),
            }
        }
        true
    }

    /// Reads until the server closes the socket: its close code and reason.
    pub fn expect_socket_close(&mut self) -> (u16, String) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(Instant::now() < deadline, "no close within 10 s");
            match self.ws.read() {
                Ok(Message::Close(Some(f))) => return (u16::from(f.code), f.reason.to_string()),
                Ok(Message::Close(None)) => return (1005, String::new()),
                Ok(Message::Binary(b)) => self.handle(&b),
                Ok(_) => {}
                Err(e) if read_timed_out(&e) => {}
                Err(e) => panic!("ended without a close frame: {e}"),
            }
        }
    }
}
