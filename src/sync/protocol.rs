//! y-websocket messages (lib0 framing): decoding with every size checked before use, and
//! encoding of what the server sends.

use super::lib0::{self, DecodeError, Reader};
use super::update_check::{check_update_v1, UpdateError, UpdateLimits, UpdateStats};

pub const MESSAGE_SYNC: u8 = 0;
pub const MESSAGE_AWARENESS: u8 = 1;
pub const MESSAGE_AUTH: u8 = 2;
pub const MESSAGE_QUERY_AWARENESS: u8 = 3;

pub const SYNC_STEP1: u8 = 0;
pub const SYNC_STEP2: u8 = 1;
pub const SYNC_UPDATE: u8 = 2;

/// Awareness client ids are JavaScript numbers: at most 2^53 - 1.
const CLIENT_ID_MAX: u64 = (1 << 53) - 1;

/// A decoded client message, borrowing from the frame payload.
#[derive(Debug)]
pub enum Message<'a> {
    SyncStep1(StateVectorEntries<'a>),
    /// Step 2 or update: a checked Yjs v1 update.
    Update {
        step2: bool,
        update: &'a [u8],
        stats: UpdateStats,
    },
    Awareness(AwarenessEntries<'a>),
    QueryAwareness,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolError {
    Decode(DecodeError),
    Update(UpdateError),
    /// A message type or sync step this protocol does not define, or one only the server
    /// may send.
    UnknownType,
    /// An awareness state that is not JSON: relayed, it would break every other client.
    AwarenessNotJson,
}

impl From<DecodeError> for ProtocolError {
    fn from(e: DecodeError) -> Self {
        ProtocolError::Decode(e)
    }
}

impl ProtocolError {
    pub fn reason(&self) -> &'static str {
        match self {
            ProtocolError::Decode(DecodeError::TrailingBytes) => {
                "malformed message: trailing bytes"
            }
            ProtocolError::Decode(DecodeError::NonMinimal) => {
                "malformed message: message type or sync step not minimally encoded"
            }
            ProtocolError::Decode(_) => "malformed message",
            ProtocolError::Update(UpdateError::TooManyStructs) => "update has too many structs",
            ProtocolError::Update(UpdateError::DuplicateClient) => {
                "malformed update: a client appears twice"
            }
            ProtocolError::Update(UpdateError::LegacyJson) => {
                "update has legacy JSON content, which this server cannot apply"
            }
            ProtocolError::Update(UpdateError::Subdocument) => {
                "update has a subdocument, which this server does not support"
            }
            ProtocolError::Update(UpdateError::ClockOverflow) => {
                "update's clocks run past 2^31, which this server cannot apply"
            }
            ProtocolError::Update(_) => "malformed update",
            ProtocolError::UnknownType => "unknown message type",
            ProtocolError::AwarenessNotJson => "awareness state is not JSON",
        }
    }
}

impl Message<'_> {
    /// Whether handling it changes the document: what `opsPerMinute` counts. The empty
    /// update Yjs sends when it has nothing to say is not a change.
    pub fn changes_document(&self) -> bool {
        matches!(self, Message::Update { stats, .. } if !stats.is_empty())
    }
}

/// Decodes one client message (the payload of one binary WebSocket message). The message
/// type and sync step must be minimally encoded: every limit and count is keyed on what is
/// decoded here, and a relayed message must read the same to every other client.
pub fn decode<'a>(payload: &'a [u8], limits: &UpdateLimits) -> Result<Message<'a>, ProtocolError> {
    let mut r = Reader::new(payload);
    let message = match r.minimal_var_u32()? {
        t if t == MESSAGE_SYNC as u32 => {
            let step = r.minimal_var_u32()?;
            let body = r.var_bytes()?;
            match step {
                s if s == SYNC_STEP1 as u32 => Message::SyncStep1(StateVectorEntries::parse(body)?),
                s if s == SYNC_STEP2 as u32 || s == SYNC_UPDATE as u32 => Message::Update {
                    step2: s == SYNC_STEP2 as u32,
                    update: body,
                    stats: check_update_v1(body, limits).map_err(ProtocolError::Update)?,
                },
                _ => return Err(ProtocolError::UnknownType),
            }
        }
        t if t == MESSAGE_AWARENESS as u32 => {
            Message::Awareness(AwarenessEntries::parse(r.var_bytes()?)?)
        }
        t if t == MESSAGE_QUERY_AWARENESS as u32 => Message::QueryAwareness,
        _ => return Err(ProtocolError::UnknownType),
    };
    r.finish()?;
    Ok(message)
}

/// A checked, encoded state vector: (client, clock) pairs.
#[derive(Debug, Clone, Copy)]
pub struct StateVectorEntries<'a> {
    bytes: &'a [u8],
}

impl<'a> StateVectorEntries<'a> {
    fn parse(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let n = r.count(2)?;
        for _ in 0..n {
            r.var_u64()?;
            r.var_u32()?;
        }
        r.finish()?;
        Ok(StateVectorEntries { bytes })
    }

    /// No entries: the client has nothing yet.
    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, u32)> + 'a {
        let mut r = Reader::new(self.bytes);
        let n = r.count(2).expect("checked in parse");
        (0..n).map(move |_| {
            let client = r.var_u64().expect("checked in parse");
            (client, r.var_u32().expect("checked in parse"))
        })
    }

    pub fn to_state_vector(&self) -> yrs::StateVector {
        self.iter()
            .map(|(client, clock)| (yrs::block::ClientID::new(client), clock))
            .collect()
    }
}

/// One entry of an awareness update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AwarenessEntry<'a> {
    pub client_id: u64,
    pub clock: u32,
    /// JSON text; `"null"` removes the client.
    pub state: &'a str,
}

/// A checked awareness update: every entry decodes and every state is JSON.
#[derive(Debug, Clone, Copy)]
pub struct AwarenessEntries<'a> {
    /// The encoded update (without the message type and length prefix), for relaying as is.
    pub bytes: &'a [u8],
    pub len: usize,
}

impl<'a> AwarenessEntries<'a> {
    fn parse(bytes: &'a [u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(bytes);
        // client id, clock and an empty string take at least 3 bytes.
        let len = r.count(3)?;
        for _ in 0..len {
            let entry = read_awareness_entry(&mut r)?;
            if serde_json::from_str::<serde::de::IgnoredAny>(entry.state).is_err() {
                return Err(ProtocolError::AwarenessNotJson);
            }
        }
        r.finish()?;
        Ok(AwarenessEntries { bytes, len })
    }

    pub fn iter(&self) -> impl Iterator<Item = AwarenessEntry<'a>> + 'a {
        let mut r = Reader::new(self.bytes);
        let len = r.count(3).unwrap_or(0);
        (0..len).map_while(move |_| read_awareness_entry(&mut r).ok())
    }
}

fn read_awareness_entry<'a>(r: &mut Reader<'a>) -> Result<AwarenessEntry<'a>, DecodeError> {
    let client_id = r.var_u64()?;
    if client_id > CLIENT_ID_MAX {
        return Err(DecodeError::Overflow);
    }
    let clock = r.var_u32()?;
    let state = r.var_str()?;
    Ok(AwarenessEntry {
        client_id,
        clock,
        state,
    })
}

/// The head of `[MESSAGE_SYNC, step, len, body]`: the message up to its body, so that a
/// frame can be put together from it and a borrowed body without another copy.
pub fn sync_head(step: u8, body_len: usize) -> ([u8; 12], usize) {
    let mut head = [0u8; 12];
    head[0] = MESSAGE_SYNC;
    head[1] = step;
    let n = lib0::put_var_u64(&mut head[2..], body_len as u64);
    (head, 2 + n)
}

/// The head of `[MESSAGE_AWARENESS, len, update]`, as [`sync_head`] is of a sync message.
pub fn awareness_head(update_len: usize) -> ([u8; 12], usize) {
    let mut head = [0u8; 12];
    head[0] = MESSAGE_AWARENESS;
    let n = lib0::put_var_u64(&mut head[1..], update_len as u64);
    (head, 1 + n)
}

/// `[MESSAGE_SYNC, step, len, body]`.
pub fn encode_sync(step: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + lib0::var_u64_len(body.len() as u64) + body.len());
    out.push(MESSAGE_SYNC);
    out.push(step);
    lib0::write_var_bytes(&mut out, body);
    out
}

/// `[MESSAGE_AWARENESS, len, update]` for the given entries.
pub fn encode_awareness<'e>(entries: impl ExactSizeIterator<Item = AwarenessEntry<'e>>) -> Vec<u8> {
    let mut update = Vec::new();
    lib0::write_var_u64(&mut update, entries.len() as u64);
    for e in entries {
        lib0::write_var_u64(&mut update, e.client_id);
        lib0::write_var_u64(&mut update, e.clock as u64);
        lib0::write_var_bytes(&mut update, e.state.as_bytes());
    }
    let mut out = Vec::with_capacity(1 + 5 + update.len());
    out.push(MESSAGE_AWARENESS);
    lib0::write_var_bytes(&mut out, &update);
    out
}

/// `[MESSAGE_AUTH, 0 (permission denied), reason]`.
pub fn encode_permission_denied(reason: &str) -> Vec<u8> {
    let mut out = vec![MESSAGE_AUTH, 0];
    lib0::write_var_bytes(&mut out, reason.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> UpdateLimits {
        UpdateLimits::default()
    }

    #[test]
    fn the_known_allocation_bombs_are_refused_cheaply() {
        // 7 bytes that made yrs reserve 264 MB (awareness with a huge declared count).
        let awareness = [0x01, 0x04, 0xaf, 0xf6, 0xaf, 0x6c, 0x11];
        assert!(decode(&awareness, &limits()).is_err());
        // 14 bytes that made yrs reserve 133 MB (a step 1 with a huge state vector count).
        let step1 = [
            0x00, 0x00, 0x0a, 0xa4, 0xa4, 0xa4, 0xa4, 0x00, 0x00, 0x02, 0x1f, 0x05, 0x5c, 0x0a,
        ];
        assert!(decode(&step1, &limits()).is_err());
    }

    #[test]
    fn decodes_step1_and_keeps_the_entries() {
        let mut sv = Vec::new();
        lib0::write_var_u64(&mut sv, 2);
        for (c, k) in [(5u64, 10u64), (1 << 40, 3)] {
            lib0::write_var_u64(&mut sv, c);
            lib0::write_var_u64(&mut sv, k);
        }
        let msg = encode_sync(SYNC_STEP1, &sv);
        let Message::SyncStep1(entries) = decode(&msg, &limits()).unwrap() else {
            panic!()
        };
        assert_eq!(
            entries.iter().collect::<Vec<_>>(),
            vec![(5, 10), (1 << 40, 3)]
        );
        assert_eq!(
            entries.to_state_vector().get(&yrs::block::ClientID::new(5)),
            10
        );
    }

    #[test]
    fn awareness_round_trip_and_json_check() {
        let entries = [
            AwarenessEntry {
                client_id: 1,
                clock: 2,
                state: "{\"user\":\"a\"}",
            },
            AwarenessEntry {
                client_id: 3,
                clock: 4,
                state: "null",
            },
        ];
        let msg = encode_awareness(entries.iter().copied());
        let Message::Awareness(a) = decode(&msg, &limits()).unwrap() else {
            panic!()
        };
        assert_eq!(a.iter().collect::<Vec<_>>(), entries.to_vec());
        let bad = encode_awareness(
            [AwarenessEntry {
                client_id: 1,
                clock: 1,
                state: "{oops",
            }]
            .into_iter(),
        );
        assert_eq!(
            decode(&bad, &limits()).unwrap_err(),
            ProtocolError::AwarenessNotJson
        );
    }

    #[test]
    fn unknown_and_server_only_types_are_refused() {
        assert_eq!(
            decode(&[9], &limits()).unwrap_err(),
            ProtocolError::UnknownType
        );
        assert_eq!(
            decode(&[MESSAGE_AUTH, 0, 0], &limits()).unwrap_err(),
            ProtocolError::UnknownType
        );
        assert_eq!(
            decode(&[0, 7, 0], &limits()).unwrap_err(),
            ProtocolError::UnknownType
        );
        assert!(matches!(
            decode(&[3], &limits()).unwrap(),
            Message::QueryAwareness
        ));
        assert_eq!(
            decode(&[3, 0], &limits()).unwrap_err(),
            ProtocolError::Decode(DecodeError::TrailingBytes)
        );
    }

    #[test]
    fn only_updates_with_changes_count_as_changes() {
        let changes = |bytes: &[u8]| decode(bytes, &limits()).unwrap().changes_document();
        let update = {
            use yrs::{Text, Transact};
            let doc = yrs::Doc::with_client_id(1);
            let text = doc.get_or_insert_text("t");
            let mut txn = doc.transact_mut();
            text.insert(&mut txn, 0, "x");
            txn.encode_update_v1()
        };
        assert!(changes(&encode_sync(SYNC_UPDATE, &update)));
        assert!(changes(&encode_sync(SYNC_STEP2, &update)));
        assert!(!changes(&encode_sync(SYNC_STEP2, &[0, 0])), "empty step 2");
        assert!(!changes(&[0, 0, 1, 0]), "step 1");
        assert!(!changes(&[1, 1, 0]), "awareness");
    }

    #[test]
    fn an_overlong_type_or_step_is_refused_not_misread() {
        let mut overlong_type = vec![0x80, 0x00];
        overlong_type.extend_from_slice(&encode_sync(SYNC_UPDATE, &[0, 0])[1..]);
        assert_eq!(
            decode(&overlong_type, &limits()).unwrap_err(),
            ProtocolError::Decode(DecodeError::NonMinimal)
        );
        let overlong_step = [0, 0x81, 0x00, 2, 0, 0];
        assert_eq!(
            decode(&overlong_step, &limits()).unwrap_err(),
            ProtocolError::Decode(DecodeError::NonMinimal)
        );
        assert_eq!(
            decode(&[0x83, 0x00], &limits()).unwrap_err(),
            ProtocolError::Decode(DecodeError::NonMinimal)
        );
    }

    #[test]
    fn empty_update_decodes_as_empty() {
        let msg = encode_sync(SYNC_STEP2, &[0, 0]);
        let Message::Update { step2, stats, .. } = decode(&msg, &limits()).unwrap() else {
            panic!()
        };
        assert!(step2 && stats.is_empty());
    }
}
