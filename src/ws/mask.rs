//! Client-to-server payload masking (RFC 6455 section 5.3).

/// XORs `payload` with the 4-byte `mask`, as if `payload` started `offset` bytes into the frame
/// payload (so a payload can be unmasked in pieces).
///
/// Works a machine word at a time; the byte loop only handles the unaligned head and the tail.
/// The compiler turns the word loop into SIMD, which is what keeps this at memory bandwidth.
pub fn unmask(payload: &mut [u8], mask: [u8; 4], offset: usize) {
    let rotated = rotate(mask, offset);
    let (head, words, tail) = unsafe {
        // SAFETY: any bit pattern is a valid u64 and u8; align_to_mut only reinterprets.
        payload.align_to_mut::<u64>()
    };
    for (i, byte) in head.iter_mut().enumerate() {
        *byte ^= rotated[i & 3];
    }
    let word_mask = rotate(rotated, head.len());
    let word = u64::from_ne_bytes([
        word_mask[0],
        word_mask[1],
        word_mask[2],
        word_mask[3],
        word_mask[0],
        word_mask[1],
        word_mask[2],
        word_mask[3],
    ]);
    for w in words.iter_mut() {
        *w ^= word;
    }
    // Each u64 covers 8 bytes, a multiple of 4, so the tail starts at the same mask phase
    // as the words did.
    for (i, byte) in tail.iter_mut().enumerate() {
        *byte ^= word_mask[i & 3];
    }
}

fn rotate(mask: [u8; 4], by: usize) -> [u8; 4] {
    let by = by & 3;
    [
        mask[by],
        mask[(by + 1) & 3],
        mask[(by + 2) & 3],
        mask[(by + 3) & 3],
    ]
}

/// The obvious byte-at-a-time version: the reference the fast one is tested (and benched)
/// against.
pub fn unmask_bytewise(payload: &mut [u8], mask: [u8; 4], offset: usize) {
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[(offset + i) & 3];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_bytewise_for_all_lengths_offsets_and_alignments() {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let source: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for start in 0..8 {
            for len in 0..120 {
                for offset in 0..5 {
                    let mut fast = source[start..start + len].to_vec();
                    let mut slow = fast.clone();
                    unmask(&mut fast, mask, offset);
                    unmask_bytewise(&mut slow, mask, offset);
                    assert_eq!(fast, slow, "start {start} len {len} offset {offset}");
                }
            }
        }
    }

    #[test]
    fn rfc_example_hello() {
        // RFC 6455 5.7: masked "Hello".
        let mut payload = [0x7f, 0x9f, 0x4d, 0x51, 0x58];
        unmask(&mut payload, [0x37, 0xfa, 0x21, 0x3d], 0);
        assert_eq!(&payload, b"Hello");
    }

    #[test]
    fn unmasking_in_pieces_equals_unmasking_at_once() {
        let mask = [1, 2, 3, 4];
        let mut whole: Vec<u8> = (0..50).collect();
        let mut pieces = whole.clone();
        unmask(&mut whole, mask, 0);
        let (a, b) = pieces.split_at_mut(13);
        unmask(a, mask, 0);
        unmask(b, mask, 13);
        assert_eq!(whole, pieces);
    }
}
