//! Splitting big images into parts so the builder's memory stays bounded.
//!
//! The suffix array costs four bytes per indexed old byte, so diffing a multi-GiB image
//! in one piece would need many GiB. Instead, when either image is larger than the
//! window cap, the new image is cut into parts of at most `window_cap` bytes and each
//! part is diffed against a window of at most `window_cap` old bytes centred on the same
//! relative position (images that change between versions mostly grow or shrink
//! gradually, so content stays roughly in place). Peak builder memory is then about
//! `old window (1×) + suffix array (4×) + construction scratch (≈1×) + new part (1×)`,
//! i.e. roughly 7 × `window_cap`, whatever the image size. Matches that would cross a
//! window edge are lost; with the default 256 MiB cap, images up to that size are
//! diffed in one piece and lose nothing.

use std::ops::Range;

/// One unit of diffing work: a range of the new image and the old window it is diffed
/// against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub new: Range<u64>,
    pub old: Range<u64>,
}

/// Plans the parts for images of `old_len` and `new_len` bytes with at most
/// `window_cap` bytes of either in memory per part. Parts tile the new image in order.
pub fn plan_parts(old_len: u64, new_len: u64, window_cap: u64) -> Vec<Part> {
    let window_cap = window_cap.max(1);
    if new_len == 0 {
        return Vec::new();
    }
    let count = new_len.div_ceil(window_cap);
    let old_window = old_len.min(window_cap);
    (0..count)
        .map(|index| {
            let start = new_len * index / count;
            let end = new_len * (index + 1) / count;
            // Centre of this part, mapped to the same relative position in the old image.
            let centre =
                ((u128::from(start + end) / 2) * u128::from(old_len) / u128::from(new_len)) as u64;
            let old_start = centre
                .saturating_sub(old_window / 2)
                .min(old_len - old_window);
            Part {
                new: start..end,
                old: old_start..old_start + old_window,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_tile_the_new_image_and_respect_the_cap() {
        let cases = [
            (100u64, 100u64, 1000u64),
            (0, 50, 10),
            (50, 0, 10),
            (1000, 3000, 256),
            (5000, 700, 256),
            (1 << 34, (1 << 34) + 12345, 256 << 20),
            (7, 7, 1),
        ];
        for (old_len, new_len, cap) in cases {
            let parts = plan_parts(old_len, new_len, cap);
            let mut next = 0;
            for part in &parts {
                assert_eq!(
                    part.new.start, next,
                    "parts of ({old_len}, {new_len}, {cap}) must be contiguous"
                );
                assert!(
                    part.new.end - part.new.start <= cap,
                    "new part over the cap: {part:?}"
                );
                assert!(
                    part.old.end - part.old.start <= cap,
                    "old window over the cap: {part:?}"
                );
                assert!(
                    part.old.end <= old_len,
                    "old window past the old image: {part:?}"
                );
                next = part.new.end;
            }
            assert_eq!(
                next, new_len,
                "parts of ({old_len}, {new_len}, {cap}) must cover the new image"
            );
        }
    }

    #[test]
    fn small_images_are_one_part_with_the_whole_old_image() {
        assert_eq!(
            plan_parts(10, 20, 100),
            vec![Part {
                new: 0..20,
                old: 0..10
            }]
        );
    }
}
