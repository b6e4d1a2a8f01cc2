//! A bounded structural walk of a Yjs v1 update, run before yrs decodes it.
//!
//! yrs trusts the counts an update declares and reserves memory for them; this walk proves
//! every count and length is backed by real bytes, that nesting is shallow, and that the
//! whole update is well formed, without allocating. Only then is the update handed to yrs.

use super::lib0::{DecodeError, Reader};

/// Limits on what one update may hold.
#[derive(Debug, Clone, Copy)]
pub struct UpdateLimits {
    /// Structs (items, GC and skip ranges) and delete ranges in one update: yrs keeps every
    /// struct in memory, and each delete range may split an item in two.
    pub structs_max: usize,
    /// Nesting of `Any` values (maps and arrays inside maps and arrays).
    pub any_depth_max: usize,
}

impl Default for UpdateLimits {
    fn default() -> Self {
        UpdateLimits {
            structs_max: 1 << 20,
            any_depth_max: 32,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateError {
    Decode(DecodeError),
    /// More structs than [`UpdateLimits::structs_max`].
    TooManyStructs,
    /// A zero-length GC or skip range, which yrs refuses.
    EmptyRange,
    /// Two struct sections for one client. Yjs never writes that, and overlapping ranges in
    /// them make yrs 0.28 divide by zero when it commits (found by the `sync_message` fuzz
    /// target).
    DuplicateClient,
    /// Legacy JSON content (content ref 2, which Yjs reads and no longer writes): yrs 0.28
    /// reads one string more than its count, so it and every Yjs client would read the rest
    /// of the update differently (found by the `hocuspocus_message` fuzz target: the
    /// misread count made yrs reserve ~100 GB).
    LegacyJson,
    /// A subdocument (content ref 9). yrs 0.28 gives the item a strong reference to its
    /// parent document, so a document that ever held one is never freed: a client could
    /// leak every document it touches (found by the `hocuspocus_message` fuzz target's leak
    /// check).
    Subdocument,
    /// A struct or delete range reaching past [`CLOCK_MAX`]. yrs 0.28 takes the difference
    /// of two clocks as `i32`, so past it a client's blocks land out of order and a later
    /// lookup indexes out of bounds (found by the `hocuspocus_message` fuzz target: a GC
    /// range at clock 2^31 + 2^28). A Yjs client reaches it after 2^31 insertions of its own.
    ClockOverflow,
}

/// The highest clock (exclusive end of a range) an update may reach: what yrs's `i32`
/// clock arithmetic holds.
pub const CLOCK_MAX: u64 = i32::MAX as u64;

impl From<DecodeError> for UpdateError {
    fn from(e: DecodeError) -> Self {
        UpdateError::Decode(e)
    }
}

/// What the walk saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UpdateStats {
    pub structs: usize,
    pub delete_ranges: usize,
}

impl UpdateStats {
    /// An update with nothing in it (Yjs sends `[0, 0]` whenever there is nothing to add).
    pub fn is_empty(&self) -> bool {
        self.structs == 0 && self.delete_ranges == 0
    }
}

const GC: u8 = 0;
const SKIP: u8 = 10;
const HAS_ORIGIN: u8 = 0x80;
const HAS_RIGHT_ORIGIN: u8 = 0x40;
const HAS_PARENT_SUB: u8 = 0x20;
const TYPE_XML_ELEMENT: u8 = 3;

/// Walks `update` (Yjs update format v1) end to end.
pub fn check_update_v1(update: &[u8], limits: &UpdateLimits) -> Result<UpdateStats, UpdateError> {
    let mut r = Reader::new(update);
    let mut stats = UpdateStats::default();
    // Each client section is at least 3 bytes (count, client, clock); each struct at least 2.
    let clients = r.count(3)?;
    // The client ids of the sections, to find one named twice (sections are at least 3
    // bytes each, so this holds at most a third of the update's length in ids).
    let mut client_ids = Vec::with_capacity(if clients > 1 { clients } else { 0 });
    for _ in 0..clients {
        let structs = r.count(2)?;
        let client = r.var_u64()?;
        // Where the section's structs end, counted high (a string's UTF-8 bytes stand for
        // its UTF-16 length): checked after each struct, so it stays far below u64's range.
        let mut clock_end = within_clocks(r.var_u32()?.into())?;
        if clients > 1 {
            client_ids.push(client);
        }
        stats.structs += structs;
        if stats.structs > limits.structs_max {
            return Err(UpdateError::TooManyStructs);
        }
        for _ in 0..structs {
            clock_end = within_clocks(clock_end + walk_struct(&mut r, limits)?)?;
        }
    }
    client_ids.sort_unstable();
    if client_ids.windows(2).any(|pair| pair[0] == pair[1]) {
        return Err(UpdateError::DuplicateClient);
    }
    // Delete set: clients, each with ranges of (clock, len).
    let ds_clients = r.count(2)?;
    for _ in 0..ds_clients {
        let _client = r.var_u64()?;
        let ranges = r.count(2)?;
        for _ in 0..ranges {
            let clock = u64::from(r.var_u32()?);
            within_clocks(clock + u64::from(r.var_u32()?))?;
        }
        stats.delete_ranges += ranges;
        if stats.structs + stats.delete_ranges > limits.structs_max {
            return Err(UpdateError::TooManyStructs);
        }
    }
    r.finish()?;
    Ok(stats)
}

/// `clock_end`, if yrs can hold it.
fn within_clocks(clock_end: u64) -> Result<u64, UpdateError> {
    if clock_end > CLOCK_MAX {
        return Err(UpdateError::ClockOverflow);
    }
    Ok(clock_end)
}

/// Walks one struct; its length in clock ticks, or more (never less) for a string.
fn walk_struct(r: &mut Reader<'_>, limits: &UpdateLimits) -> Result<u64, UpdateError> {
    let info = r.u8()?;
    match info {
        GC | SKIP => {
            let len = r.var_u32()?;
            if len == 0 {
                return Err(UpdateError::EmptyRange);
            }
            return Ok(len.into());
        }
        _ => {}
    }
    if info & HAS_ORIGIN != 0 {
        r.var_u64()?;
        r.var_u32()?;
    }
    if info & HAS_RIGHT_ORIGIN != 0 {
        r.var_u64()?;
        r.var_u32()?;
    }
    let cant_copy_parent_info = info & (HAS_ORIGIN | HAS_RIGHT_ORIGIN) == 0;
    if cant_copy_parent_info {
        if r.var_u32()? == 1 {
            r.var_str()?; // root type name
        } else {
            r.var_u64()?; // parent item id
            r.var_u32()?;
        }
        if info & HAS_PARENT_SUB != 0 {
            r.var_str()?;
        }
    }
    walk_content(r, info & 0x1F, limits)
}

/// Walks an item's content; its length as [`walk_struct`] counts it.
fn walk_content(
    r: &mut Reader<'_>,
    content_ref: u8,
    limits: &UpdateLimits,
) -> Result<u64, UpdateError> {
    let len = match content_ref {
        1 => r.var_u32()?.into(), // Deleted: a length.
        2 => return Err(UpdateError::LegacyJson),
        3 => {
            r.var_bytes()?; // Binary
            1
        }
        // String: its length is in UTF-16 units, never more than its UTF-8 bytes.
        4 => r.var_str()?.len() as u64,
        5 => {
            r.var_str()?; // Embed (JSON text)
            1
        }
        6 => {
            r.var_str()?; // Format key
            r.var_str()?; // Format value (JSON text)
            1
        }
        7 => {
            // Type: a type ref byte, XML elements carry their tag name.
            if r.u8()? == TYPE_XML_ELEMENT {
                r.var_str()?;
            }
            1
        }
        8 => {
            let n = r.count(1)?;
            for _ in 0..n {
                walk_any(r, 0, limits)?;
            }
            n as u64
        }
        9 => return Err(UpdateError::Subdocument),
        _ => return Err(DecodeError::UnknownTag.into()),
    };
    Ok(len)
}

fn walk_any(r: &mut Reader<'_>, depth: usize, limits: &UpdateLimits) -> Result<(), UpdateError> {
    if depth > limits.any_depth_max {
        return Err(DecodeError::TooDeep.into());
    }
    match r.u8()? {
        127 | 126 | 121 | 120 => {} // undefined, null, false, true
        125 => {
            r.var_i64()?;
        }
        124 => {
            r.bytes(4)?;
        }
        123 | 122 => {
            r.bytes(8)?;
        }
        119 => {
            r.var_str()?;
        }
        118 => {
            // Map: (key, value) pairs of at least 2 bytes each.
            let n = r.count(2)?;
            for _ in 0..n {
                r.var_str()?;
                walk_any(r, depth + 1, limits)?;
            }
        }
        117 => {
            let n = r.count(1)?;
            for _ in 0..n {
                walk_any(r, depth + 1, limits)?;
            }
        }
        116 => {
            r.var_bytes()?;
        }
        _ => return Err(DecodeError::UnknownTag.into()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::updates::decoder::Decode;
    use yrs::{Array, Doc, GetString, Map, ReadTxn, Text, Transact, Update, XmlFragment};

    fn limits() -> UpdateLimits {
        UpdateLimits::default()
    }

    /// An update exercising most content kinds, made by yrs itself.
    fn rich_update() -> Vec<u8> {
        let doc = Doc::with_client_id(7);
        let text = doc.get_or_insert_text("t");
        let map = doc.get_or_insert_map("m");
        let array = doc.get_or_insert_array("a");
        let xml = doc.get_or_insert_xml_fragment("x");
        {
            let mut txn = doc.transact_mut();
            text.insert(&mut txn, 0, "hello world");
            text.remove_range(&mut txn, 2, 3);
            map.insert(
                &mut txn,
                "k",
                yrs::Any::from(vec![yrs::Any::from(1.5), yrs::Any::Null]),
            );
            map.insert(&mut txn, "nested", yrs::MapPrelim::default());
            array.push_back(&mut txn, yrs::Any::Buffer(vec![1u8, 2, 3].into()));
            array.push_back(&mut txn, -42i64);
            xml.push_back(&mut txn, yrs::XmlElementPrelim::empty("p"));
        }
        let txn = doc.transact();
        txn.encode_state_as_update_v1(&yrs::StateVector::default())
    }

    #[test]
    fn accepts_what_yrs_encodes() {
        let update = rich_update();
        let stats = check_update_v1(&update, &limits()).unwrap();
        assert!(stats.structs > 0 && stats.delete_ranges > 0);
        // And yrs agrees it decodes.
        Update::decode_v1(&update).unwrap();
        let empty = Doc::new()
            .transact()
            .encode_state_as_update_v1(&yrs::StateVector::default());
        assert_eq!(empty, vec![0, 0]);
        assert!(check_update_v1(&empty, &limits()).unwrap().is_empty());
    }

    #[test]
    fn every_truncation_is_refused() {
        let update = rich_update();
        for cut in 0..update.len() {
            assert!(
                check_update_v1(&update[..cut], &limits()).is_err(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn a_client_named_twice_is_refused() {
        // The fuzz crash: client 0 in two sections with overlapping GC ranges (yrs 0.28
        // divides by zero committing it), between two empty sections.
        let crash = [4, 0, 48, 0, 1, 0, 0, 0, 1, 1, 0, 0, 0, 2, 0, 46, 7, 0];
        assert_eq!(
            check_update_v1(&crash, &limits()),
            Err(UpdateError::DuplicateClient)
        );
        // The same ranges under two different clients are fine.
        let distinct = [2, 1, 0, 0, 0, 1, 1, 5, 0, 0, 2, 0];
        assert_eq!(check_update_v1(&distinct, &limits()).unwrap().structs, 2);
    }

    #[test]
    fn legacy_json_content_is_refused_because_yrs_misreads_its_count() {
        // The fuzz finding: an item with JSON content of 0 strings, then an empty section
        // whose long client id yrs reads as a struct count after taking one string too many.
        let found = [
            2, 1, 0, 0xff, 0xff, 0xff, 0xff, 3, 2, 0x63, 0x31, 0, 0, 0, 0xff, 0xe3, 0xff, 0xff,
            0xcf, 0, 0, 0,
        ];
        assert_eq!(
            check_update_v1(&found, &limits()),
            Err(UpdateError::LegacyJson)
        );
        // Why it must be refused: yrs does not read it as the walk (and Yjs) would.
        assert!(Update::decode_v1(&found).is_err());
    }

    #[test]
    fn subdocuments_are_refused_because_yrs_never_frees_their_parent() {
        let doc = Doc::with_client_id(7);
        let map = doc.get_or_insert_map("m");
        map.insert(&mut doc.transact_mut(), "sub", Doc::new());
        let update = doc
            .transact()
            .encode_state_as_update_v1(&yrs::StateVector::default());
        assert_eq!(
            check_update_v1(&update, &limits()),
            Err(UpdateError::Subdocument)
        );
        // The update in the fuzz input the leak check caught (client 37's first item is a
        // subdocument).
        let found = [
            2, 1, 37, 0, 9, 1, 0, 0, 125, 255, 255, 0, 1, 22, 2, 1, 255, 1, 0, 0, 4, 0,
        ];
        assert_eq!(
            check_update_v1(&found, &limits()),
            Err(UpdateError::Subdocument)
        );
    }

    /// A GC range of client 1 from `clock`, `len` long, and a delete range of client 1.
    fn gc_at(clock: u32, len: u32, deleted: (u32, u32)) -> Vec<u8> {
        let mut update = vec![1, 1, 1];
        crate::sync::lib0::write_var_u64(&mut update, clock.into());
        update.push(GC);
        crate::sync::lib0::write_var_u64(&mut update, len.into());
        update.extend_from_slice(&[1, 1, 1]);
        crate::sync::lib0::write_var_u64(&mut update, deleted.0.into());
        crate::sync::lib0::write_var_u64(&mut update, deleted.1.into());
        update
    }

    #[test]
    fn clocks_past_what_yrs_holds_are_refused() {
        let max = CLOCK_MAX as u32;
        // At the bound, struct and delete range alike: taken, and yrs applies it.
        let at_bound = gc_at(max - 5, 5, (max - 3, 3));
        check_update_v1(&at_bound, &limits()).unwrap();
        Doc::new()
            .transact_mut()
            .apply_update(Update::decode_v1(&at_bound).unwrap())
            .unwrap();
        // One past it, either way.
        for past in [gc_at(max - 5, 6, (0, 1)), gc_at(0, 1, (max - 3, 4))] {
            assert_eq!(
                check_update_v1(&past, &limits()),
                Err(UpdateError::ClockOverflow)
            );
        }
        // A section starting past it, and a string that runs past it.
        let mut late_start = gc_at(0, 1, (0, 1));
        late_start.splice(3..4, [0x80, 0x80, 0x80, 0x80, 0x08]);
        assert_eq!(
            check_update_v1(&late_start, &limits()),
            Err(UpdateError::ClockOverflow)
        );
        // A string item of root type "t" at `clock`, then an empty delete set.
        let string_at = |clock: u64, text: &[u8]| {
            let mut update = vec![1, 1, 1];
            crate::sync::lib0::write_var_u64(&mut update, clock);
            update.extend_from_slice(&[4, 1, 1, b't', text.len() as u8]);
            update.extend_from_slice(text);
            update.push(0);
            update
        };
        check_update_v1(&string_at(CLOCK_MAX - 2, b"ab"), &limits()).unwrap();
        assert_eq!(
            check_update_v1(&string_at(CLOCK_MAX - 2, b"abc"), &limits()),
            Err(UpdateError::ClockOverflow)
        );
    }

    #[test]
    fn the_clock_past_i32_the_fuzzer_found_is_refused_because_yrs_panics_on_it() {
        // The update inside the `hocuspocus_message` fuzz input: client 0's GC range at clock
        // 2^31 + 2^28 - 1, then client 103's item whose parent is (0, 0).
        let found = [
            2, 1, 0, 0xff, 0xff, 0xff, 0xff, 8, 0, 28, 2, 103, 3, 10, 2, 1, 0, 0, 28, 0xff, 0, 0,
        ];
        assert_eq!(
            check_update_v1(&found, &limits()),
            Err(UpdateError::ClockOverflow)
        );
        // Why it must be refused: yrs indexes out of bounds applying it.
        let applied = std::panic::catch_unwind(|| {
            let doc = Doc::new();
            let update = Update::decode_v1(&found).unwrap();
            let _ = doc.transact_mut().apply_update(update);
        });
        assert!(applied.is_err());
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut update = rich_update();
        update.push(0);
        assert_eq!(
            check_update_v1(&update, &limits()),
            Err(UpdateError::Decode(DecodeError::TrailingBytes))
        );
    }

    #[test]
    fn lying_counts_are_refused() {
        // One client claiming 2^31 structs, in a handful of bytes.
        let bytes = [1, 0x80, 0x80, 0x80, 0x80, 0x08, 1, 0];
        assert_eq!(
            check_update_v1(&bytes, &limits()),
            Err(UpdateError::Decode(DecodeError::Overflow))
        );
        // A map declaring a million entries.
        let bytes = [1, 1, 7, 0, 0x08, 1, 1, b'm', 1, 118, 0xC0, 0x84, 0x3D, 0, 0];
        assert!(check_update_v1(&bytes, &limits()).is_err());
    }

    #[test]
    fn struct_limit_is_enforced() {
        let update = rich_update();
        let few = UpdateLimits {
            structs_max: 1,
            ..limits()
        };
        assert_eq!(
            check_update_v1(&update, &few),
            Err(UpdateError::TooManyStructs)
        );
    }

    #[test]
    fn deep_nesting_is_refused() {
        // An Any item: 40 nested single-element arrays.
        let mut bytes = vec![1, 1, 7, 0, 0x08, 1, 1, b'a', 1];
        bytes.extend(std::iter::repeat_n([117u8, 1], 40).flatten());
        bytes.push(126);
        bytes.extend_from_slice(&[0]);
        assert_eq!(
            check_update_v1(&bytes, &limits()),
            Err(UpdateError::Decode(DecodeError::TooDeep))
        );
    }

    #[test]
    fn an_update_that_passes_applies_in_yrs() {
        let update = rich_update();
        check_update_v1(&update, &limits()).unwrap();
        let doc = Doc::new();
        doc.transact_mut()
            .apply_update(Update::decode_v1(&update).unwrap())
            .unwrap();
        let text = doc.get_or_insert_text("t");
        assert_eq!(text.get_string(&doc.transact()), "he world");
    }
}
