//! Image pairs with a known shape, shared by the builder's unit tests and the end-to-end
//! tests (`ota-tests`, through the `test-support` feature). Not part of a release build.

/// `old` and a release of it where, at 100 places `stride` bytes apart from offset 1,000,
/// 20 bytes were replaced by a near-copy of them that is also planted in `old` about
/// `distance` bytes further on (14 of 20 bytes equal, the others one more; the copy's
/// neighbours differ, so it is not part of a longer match). The eager scan leaves its alignment for
/// each copy's 19-byte exact match (6 bytes better than the alignment) and back; the
/// steady one stays on it, with six diff bytes of 1 (matcher test
/// a_short_match_off_the_alignment_moves_the_eager_scan_and_not_the_steady_one).
///
/// `old` must reach past the last copy: `1_000 + 99 * stride + distance + 721` bytes.
pub fn near_copy_release(mut old: Vec<u8>, stride: usize, distance: usize) -> (Vec<u8>, Vec<u8>) {
    let mut copies = Vec::new();
    for k in 0..100 {
        let at = 1_000 + k * stride;
        let far = at + distance + k * k * 37 % 700;
        let mut copy = old[at..at + 20].to_vec();
        for flip in [1, 4, 8, 11, 15, 18] {
            copy[flip] = copy[flip].wrapping_add(1);
        }
        old[far..far + 20].copy_from_slice(&copy);
        old[far - 1] = old[at - 1] ^ 0xff;
        old[far + 20] = old[at + 20] ^ 0xff;
        copies.push((at, copy));
    }
    let mut new = old.clone();
    for (at, copy) in copies {
        new[at..at + 20].copy_from_slice(&copy);
    }
    (old, new)
}
