//! Registry records as stored by a distributed backend: rkyv archives, validated on every
//! read (the bytes come from a database another process wrote, so they are not trusted).

use rkyv::rancor::Error;
use rkyv::util::AlignedVec;

/// A node's heartbeat record.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct NodeRecord {
    pub id: String,
    pub region: String,
    pub url: String,
    pub heartbeat_ms: u64,
}

/// A document's pin: the node it lives on.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct PinRecord {
    pub node_id: String,
    pub claimed_ms: u64,
}

/// The bytes are not a valid record of the expected type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptRecord(pub String);

pub fn encode_node(record: &NodeRecord) -> Vec<u8> {
    rkyv::to_bytes::<Error>(record)
        .expect("a record serializes")
        .to_vec()
}

pub fn encode_pin(record: &PinRecord) -> Vec<u8> {
    rkyv::to_bytes::<Error>(record)
        .expect("a record serializes")
        .to_vec()
}

/// Validates and decodes. The bytes are copied into an aligned buffer first: database
/// values come with no alignment guarantee.
pub fn decode_node(bytes: &[u8]) -> Result<NodeRecord, CorruptRecord> {
    rkyv::from_bytes::<NodeRecord, Error>(&aligned(bytes)).map_err(|e| CorruptRecord(e.to_string()))
}

pub fn decode_pin(bytes: &[u8]) -> Result<PinRecord, CorruptRecord> {
    rkyv::from_bytes::<PinRecord, Error>(&aligned(bytes)).map_err(|e| CorruptRecord(e.to_string()))
}

fn aligned(bytes: &[u8]) -> AlignedVec {
    let mut out = AlignedVec::with_capacity(bytes.len());
    out.extend_from_slice(bytes);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeRecord {
        NodeRecord {
            id: "eu1-a".into(),
            region: "eu-central-1".into(),
            url: "wss://eu1.example.com".into(),
            heartbeat_ms: 1_795_000_000_000,
        }
    }

    #[test]
    fn records_round_trip() {
        assert_eq!(decode_node(&encode_node(&node())), Ok(node()));
        let pin = PinRecord {
            node_id: "eu1-a".into(),
            claimed_ms: 7,
        };
        assert_eq!(decode_pin(&encode_pin(&pin)), Ok(pin));
    }

    #[test]
    fn unaligned_bytes_decode() {
        let bytes = encode_node(&node());
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(&bytes);
        assert_eq!(decode_node(&shifted[1..]), Ok(node()));
    }

    #[test]
    fn corrupt_bytes_are_refused_not_trusted() {
        let bytes = encode_node(&node());
        // Validation proves the bytes are safe to read, not that they are what was written:
        // a truncated archive either fails or decodes to some other valid record.
        for cut in 0..bytes.len() {
            assert_ne!(decode_node(&bytes[..cut]), Ok(node()), "truncated at {cut}");
        }
        assert!(decode_node(&bytes[..4]).is_err());
        // Corrupting single bytes: never a panic, and the damage to offsets, lengths and
        // UTF-8 is caught.
        let refused = (0..bytes.len())
            .filter(|&i| {
                let mut evil = bytes.clone();
                evil[i] = 0xFF;
                decode_node(&evil).is_err()
            })
            .count();
        assert!(refused > 0, "validation caught none of the corruptions");
        assert!(decode_pin(&[0xAB; 64]).is_err());
    }
}
