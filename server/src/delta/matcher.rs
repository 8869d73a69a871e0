//! Approximate-match search: which ranges of the new image are best expressed as "old
//! bytes plus a small difference" and which as literal bytes.
//!
//! This is the bsdiff idea (Colin Percival, "Naive differences of executable code"):
//! find exact matches through a suffix array of the old image, extend them forwards and
//! backwards while the bytes mostly agree, and emit what lies between as literal bytes.
//! The scanning loop follows qbsdiff 1.4 (MIT licence, © hucsmn), which skips over exact
//! matches instead of re-searching every byte and is several times faster than the
//! original, with the same patch quality. It is pure: slices in, matches out.

use suffix_array::SuffixArray;

/// Exact matches this short are ignored: they cost more in control data than they save.
const SMALL_MATCH: usize = 12;
/// How readily the scan leaves the alignment it follows for a new exact match: the match
/// is taken only when it beats the current alignment by more than `mismatch_count`
/// bytes. No one setting is smallest everywhere, and the sizes do not move monotonically
/// with it (cryptography 45.0.2 → 45.0.3, LZMA2 container bytes: 4 → 497,556,
/// 5 → 503,443, 6 → 453,000, 7 → 458,502, 8 → 455,025, 12 → 464,739, 16 → 522,447), so a
/// build tries every profile in [`SCAN_PROFILES`] and keeps the smallest delta
/// (docs/delta-bench.txt, session 18).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanProfile {
    /// 4 bytes: on the shared corpus 1–2% smaller than qbsdiff's 8 (grid over {4, 8, 16}
    /// × small-match lengths {8, 12, 16, 24}), and up to 2.6% smaller than 6 on the ARM64
    /// tune pairs (rpds, numpy's OpenBLAS).
    Eager,
    /// 6 bytes: the scan stays on an alignment through slightly better exact matches
    /// elsewhere. 9% smaller than `Eager` on a static-OpenSSL tune pair one patch release
    /// apart (cryptography 45.0.2 → 45.0.3), 0.03–1.0% on 9 of the other 15 tune pairs.
    /// 8 (qbsdiff's) beat 6 on one tune pair only (libcrypto, by 0.5%).
    Steady,
}

/// Every profile a build tries, in the order a tie is decided (the first wins).
pub const SCAN_PROFILES: [ScanProfile; 2] = [ScanProfile::Eager, ScanProfile::Steady];

impl ScanProfile {
    /// Bytes by which a new exact match must beat the current alignment.
    pub fn mismatch_count(self) -> usize {
        match self {
            ScanProfile::Eager => 4,
            ScanProfile::Steady => 6,
        }
    }

    /// The name `ota-server delta build` prints.
    pub fn name(self) -> &'static str {
        match self {
            ScanProfile::Eager => "eager",
            ScanProfile::Steady => "steady",
        }
    }
}
/// Above this length the end of a similar run is found by binary search instead of
/// stepping byte by byte.
const LONG_SUFFIX: usize = 256;
/// A gap between two exact matches at least this long may be covered by extending its
/// neighbours at a lower share of equal bytes (`LONG_GAP_MIN_EQUAL_PERMILLE`); shorter
/// gaps keep bsdiff's rule (more equal bytes than different ones).
///
/// Why: a table whose every entry moved a little (x86-64 `.eh_frame_hdr`, where each
/// 8-byte entry is two 32-bit offsets that all shift when code moves) has no exact match
/// of `SMALL_MATCH` bytes, and on the right alignment only 40–50% of its bytes are equal,
/// so bsdiff's rule left it literal (145 KB of literals in one gap of cryptography
/// 45.0.2 → 45.0.3). Its difference to the old bytes is a few repeated values and
/// compresses far better than the bytes themselves; HDiffPatch extends covers while 46%
/// (470/1024, smoothed) of the bytes are equal, which is what covered it there. Applied
/// to every gap, the lower share made far-apart pairs up to 1.2% larger (short gaps are
/// mostly changed code, better sent as literals compressed against old bytes); from
/// 4 KiB on it changed them by at most +0.03% (docs/delta-bench.txt, session 11).
const LONG_GAP: usize = 4096;
/// The share of equal bytes, in permille, that extends a match into a `LONG_GAP`: on the
/// tune pairs 420 and 400 gave the same sizes within 0.01%; applied to every gap, 460,
/// 440 and 380 were up to 0.5% larger than 420 on the static-OpenSSL tune pairs.
const LONG_GAP_MIN_EQUAL_PERMILLE: isize = 420;
/// bsdiff's share: more equal bytes than different ones.
const MIN_EQUAL_PERMILLE: isize = 500;

/// A run of the new slice: `diff_len` bytes derived from old bytes at `old_start`, then
/// `extra_len` literal bytes. Consecutive matches tile the new slice with no gap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Match {
    pub old_start: u64,
    pub diff_len: u64,
    pub extra_len: u64,
}

/// Old windows shorter than this get one suffix array: splitting them saves little
/// construction time and every lookup would search two arrays.
const SPLIT_MIN_LEN: usize = 1 << 20;
/// How far each piece of a split old window reaches into the next one. A match is found
/// whole when it ends at most this many bytes past its piece's nominal end; a longer
/// match across the cut is shortened there and the scan picks up the rest with its next
/// lookup.
const PIECE_OVERLAP: usize = 64 << 10;

/// The old window's suffix arrays: over two overlapping halves, built in parallel,
/// when there are two threads and the window is not small.
///
/// Suffix-array construction (divsufsort) is single-threaded and was half of the build's
/// wall time on big images while the other core idled. Two halves build in about half
/// the wall time; the price is a second search per lookup, which the match scan spreads
/// over all threads (numpy tree on 2 cores: 4.3 → 3.2 s). More pieces would add a search to every
/// lookup for an ever smaller gain, so there are at most two.
#[derive(Debug)]
pub struct OldIndex<'a> {
    /// Each piece's offset in the old window and its index.
    pieces: Vec<(usize, PieceIndex<'a>)>,
}

impl<'a> OldIndex<'a> {
    /// Index of `old` for a build with `threads` worker threads.
    pub fn build(old: &'a [u8], threads: usize) -> Self {
        let pieces = if old.len() < SPLIT_MIN_LEN {
            1
        } else {
            threads.clamp(1, 2)
        };
        Self::with_pieces(old, pieces, PIECE_OVERLAP)
    }

    /// Index of `old` cut into `pieces` pieces, each reaching `overlap` bytes into the
    /// next one, built on one thread each.
    fn with_pieces(old: &'a [u8], pieces: usize, overlap: usize) -> Self {
        let pieces = pieces.max(1);
        let ranges = (0..pieces).map(|piece| {
            let end = old.len() * (piece + 1) / pieces;
            old.len() * piece / pieces..(end + overlap).min(old.len())
        });
        let pieces = std::thread::scope(|scope| {
            let workers: Vec<_> = ranges
                .map(|range| scope.spawn(move || (range.start, PieceIndex::build(&old[range]))))
                .collect();
            workers
                .into_iter()
                .map(|worker| {
                    worker
                        .join()
                        .unwrap_or_else(|e| std::panic::resume_unwind(e))
                })
                .collect()
        });
        OldIndex { pieces }
    }

    /// The longest prefix of `pattern` found in the old window, as (old offset, length).
    /// Between equally long matches in different pieces the later piece wins: measured
    /// on the corpus, preferring the earlier piece made the numpy-openblas delta 0.5%
    /// larger than with one suffix array, preferring the later one made deltas 0.1%
    /// smaller (pydantic-core: 0.04% larger).
    fn longest_match(&self, pattern: &[u8]) -> (usize, usize) {
        let mut best = (0, 0);
        for (offset, piece) in &self.pieces {
            let (start, len) = piece.longest_match(pattern);
            if len > 0 && len >= best.1 {
                best = (offset + start, len);
            }
        }
        best
    }
}

/// Suffix array of one piece of the old window with an LCP-aware binary search.
///
/// The array is built by the `suffix_array` crate (divsufsort), but searched here: its
/// `search_lcp` compares the whole pattern against every probed suffix, and since a new
/// release mostly matches the old one for long stretches, each of the ~25 probes of a
/// lookup re-compared the same long common prefix byte by byte. That was a third of the
/// build's CPU time. This search remembers how many bytes the pattern shares with the
/// bounds of the remaining range (every suffix between them shares at least the smaller
/// of the two) and starts each comparison there, as in Manber and Myers' suffix array
/// search. It returns exactly what `SuffixArray::search_lcp` does (same buckets, same
/// choice between the two neighbours of the insertion point), so patches are unchanged.
struct PieceIndex<'a> {
    old: &'a [u8],
    /// Suffix offsets in sorted order, led by the empty suffix (`old.len()`).
    sa: Vec<u32>,
    /// End of each two-byte bucket of `sa`, laid out as in `suffix_array`:
    /// `[$; (0, $), (0, 0), …, (0, 255); …; (255, $), (255, 0), …, (255, 255)]`.
    buckets: Vec<u32>,
}

impl std::fmt::Debug for PieceIndex<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PieceIndex")
            .field("old_len", &self.old.len())
            .finish_non_exhaustive()
    }
}

impl<'a> PieceIndex<'a> {
    fn build(old: &'a [u8]) -> Self {
        let (_, sa) = SuffixArray::new(old).into_parts();
        let mut buckets = vec![0u32; 256 * 257 + 1];
        buckets[0] = 1;
        for pair in old.windows(2) {
            buckets[usize::from(pair[0]) * 257 + usize::from(pair[1]) + 2] += 1;
        }
        if let Some(&last) = old.last() {
            buckets[usize::from(last) * 257 + 1] += 1;
        }
        let mut sum = 0;
        for end in &mut buckets {
            sum += *end;
            *end = sum;
        }
        PieceIndex { old, sa, buckets }
    }

    /// The longest prefix of `pattern` found in the old window, as (old offset,
    /// length); `(old.len(), 0)` when not even its first byte occurs.
    fn longest_match(&self, pattern: &[u8]) -> (usize, usize) {
        let old = self.old;
        let Some(&c0) = pattern.first() else {
            return (old.len(), 0);
        };
        let top = usize::from(c0) * 257;
        let (bucket, known) = match pattern.get(1) {
            Some(&c1) => {
                let at = top + usize::from(c1) + 2;
                (self.buckets[at - 1] as usize..self.buckets[at] as usize, 2)
            }
            None => (
                self.buckets[top] as usize..self.buckets[top + 257] as usize,
                1,
            ),
        };
        let sa = &self.sa[bucket];
        if sa.is_empty() {
            let top = &self.sa[self.buckets[top] as usize..self.buckets[top + 257] as usize];
            return match top.first() {
                Some(&start) => (start as usize, 1),
                None => (old.len(), 0),
            };
        }
        // Every suffix in `sa[low..high]` shares at least min(low_lcp, high_lcp) bytes
        // with the pattern; all of the bucket shares its first `known` bytes.
        let (mut low, mut high) = (0, sa.len());
        let (mut low_lcp, mut high_lcp) = (known, known);
        while low < high {
            let middle = low + (high - low) / 2;
            let suffix = &old[sa[middle] as usize..];
            let skip = low_lcp.min(high_lcp);
            let shared = skip + common_prefix_len(&pattern[skip..], &suffix[skip..]);
            match (pattern.get(shared), suffix.get(shared)) {
                (None, None) => return (sa[middle] as usize, pattern.len()),
                (Some(p), Some(s)) if s < p => (low, low_lcp) = (middle + 1, shared),
                (Some(_), None) => (low, low_lcp) = (middle + 1, shared),
                _ => (high, high_lcp) = (middle, shared),
            }
        }
        // Of the suffixes either side of the insertion point, the one sharing more
        // bytes with the pattern; the one after it on a tie.
        let extend = |index: usize, floor: usize| {
            let start = sa[index] as usize;
            let floor = floor.min(pattern.len());
            (
                start,
                floor + common_prefix_len(&pattern[floor..], &old[start + floor..]),
            )
        };
        if low == 0 {
            extend(0, high_lcp)
        } else if low == sa.len() {
            extend(low - 1, low_lcp)
        } else {
            let (before, after) = (extend(low - 1, low_lcp), extend(low, high_lcp));
            if before.1 > after.1 {
                before
            } else {
                after
            }
        }
    }
}

/// How many leading bytes `a` and `b` share; compares 32-byte blocks first, since
/// matches between releases run for kilobytes.
fn common_prefix_len(a: &[u8], b: &[u8]) -> usize {
    let len = a.len().min(b.len());
    let mut at = 0;
    while at + 32 <= len && a[at..at + 32] == b[at..at + 32] {
        at += 32;
    }
    while at < len && a[at] == b[at] {
        at += 1;
    }
    at
}

/// Matches tiling all of `new` against `old`, indexed by `index`, scanned with `profile`.
pub fn find_matches(
    old: &[u8],
    index: &OldIndex<'_>,
    new: &[u8],
    profile: ScanProfile,
) -> Vec<Match> {
    find_matches_each(old, index, new, &[profile])
        .pop()
        .unwrap_or_default()
}

/// [`find_matches`] for each of `profiles` over the same slices, in that order.
///
/// The longest match of the suffix at a new offset does not depend on the profile, and
/// the profiles' scans look up mostly the same offsets. So the scans advance in step
/// (the one furthest behind goes next) and keep their recent lookups in a small cache
/// (`LookupCache`) that the others read instead of searching the index again. The cache
/// only saves searches: the matches are exactly those of `find_matches` per profile.
pub fn find_matches_each(
    old: &[u8],
    index: &OldIndex<'_>,
    new: &[u8],
    profiles: &[ScanProfile],
) -> Vec<Vec<Match>> {
    if new.is_empty() {
        return vec![Vec::new(); profiles.len()];
    }
    if old.is_empty() {
        let literal = Match {
            old_start: 0,
            diff_len: 0,
            extra_len: new.len() as u64,
        };
        return vec![vec![literal]; profiles.len()];
    }
    // No more entries than new offsets; none for one profile.
    let mut cache = LookupCache::new(if profiles.len() > 1 {
        LOOKUP_CACHE_ENTRIES.min(new.len())
    } else {
        0
    });
    let mut runs: Vec<ScanRun> = profiles
        .iter()
        .map(|&profile| ScanRun {
            scan: Scan {
                old,
                new,
                index,
                mismatch_count: profile.mismatch_count(),
                i0: 0,
                j0: 0,
                n0: 0,
                b0: 0,
            },
            out: Vec::new(),
            old_cursor: 0,
            done: false,
        })
        .collect();
    while let Some(run) = runs
        .iter_mut()
        .filter(|run| !run.done)
        .min_by_key(|run| run.scan.j0 + run.scan.n0)
    {
        run.done = !run.step(&mut cache);
    }
    runs.into_iter()
        .map(|run| {
            let mut out = run.out;
            out.retain(|m| m.diff_len + m.extra_len > 0);
            out
        })
        .collect()
}

/// Cache entries of [`find_matches_each`] (12 bytes each): the scans stay within one
/// match of each other, far fewer new offsets than this.
const LOOKUP_CACHE_ENTRIES: usize = 1 << 18;

/// Longest matches looked up recently, by new offset: direct-mapped, an entry holding
/// the offset + 1 (0: empty), the old offset and the length. A miss only costs a search.
struct LookupCache {
    entries: Vec<[u32; 3]>,
}

impl LookupCache {
    /// A cache of `entries` entries (0: keeps nothing).
    fn new(entries: usize) -> Self {
        LookupCache {
            entries: vec![[0; 3]; entries],
        }
    }

    fn get(&self, j: usize) -> Option<(usize, usize)> {
        if self.entries.is_empty() {
            return None;
        }
        let [tag, i, n] = self.entries[j % self.entries.len()];
        (u32::try_from(j + 1) == Ok(tag)).then_some((i as usize, n as usize))
    }

    fn put(&mut self, j: usize, (i, n): (usize, usize)) {
        if self.entries.is_empty() {
            return;
        }
        let slot = j % self.entries.len();
        // Offsets beyond 32 bits are not kept (suffix array offsets never are).
        if let (Ok(tag), Ok(i), Ok(n)) = (u32::try_from(j + 1), u32::try_from(i), u32::try_from(n))
        {
            self.entries[slot] = [tag, i, n];
        }
    }
}

/// One profile's scan in progress and the matches it has found.
struct ScanRun<'a> {
    scan: Scan<'a>,
    out: Vec<Match>,
    /// Old offset where the next match's diff run starts (the "source position" of
    /// bsdiff); kept signed because a seek may move it backwards.
    old_cursor: i64,
    done: bool,
}

impl ScanRun<'_> {
    /// Finds the next match and records the one it ends; false once the scan is over.
    fn step(&mut self, cache: &mut LookupCache) -> bool {
        let Some((i, j, n)) = self.scan.search_next(cache) else {
            return false;
        };
        let scan = &mut self.scan;
        let (i0, j0, n0, b0) = (scan.i0, scan.j0, scan.n0, scan.b0);
        let (a0, b) = scan.shrink_gap(i, j);
        let diff_len = (b0 + n0 + a0) as u64;
        let extra_len = ((j - b) - (j0 + n0 + a0)) as u64;
        let seek = (i as i64 - b as i64) - (i0 + n0 + a0) as i64;
        self.out.push(Match {
            old_start: self.old_cursor.max(0) as u64,
            diff_len,
            extra_len,
        });
        self.old_cursor += diff_len as i64 + seek;
        scan.i0 = i;
        scan.j0 = j;
        scan.n0 = n;
        scan.b0 = b;
        true
    }
}

/// Estimated compressed cost, in bytes, of one literal byte, one non-zero diff byte and
/// one zero/non-zero run pair, measured on the corpus at zstd level 19 (numpy tree:
/// 1.95 MB of literal bytes → 0.55 MB, 1.09 MB of non-zero diff bytes → 0.44 MB, 0.5 M
/// run pairs → 0.29 MB).
const LITERAL_COST: f64 = 0.28;
const CODE_COST: f64 = 0.40;
const RUN_COST: f64 = 0.55;
/// What a control entry costs, plus the matching it breaks up. Measured control entries
/// cost ~3.5 bytes, but the corpus grid over {2, 3.5, 5, 6, 7, 8, 10} was smallest at 7
/// (literal bytes compress better than the average suggests once they are contiguous and
/// compressed against old bytes).
const ENTRY_COST: f64 = 7.0;
/// Only matches shorter than this are candidates; longer ones always pay off.
const PRUNE_MAX_LEN: u64 = 256;

/// Drops matches that cost more as "old bytes + diff" than as literal bytes: a short
/// match whose diff is mostly non-zero bytes pays for a control entry, its run pairs and
/// its codes, while the same bytes as literals compress to about a quarter. The bsdiff
/// scan cannot see this; it only knows match lengths.
pub fn prune_weak_matches(matches: Vec<Match>, old: &[u8], new: &[u8]) -> Vec<Match> {
    let mut out: Vec<Match> = Vec::with_capacity(matches.len());
    let mut new_at = 0usize;
    for m in matches {
        let (diff_len, extra_len) = (m.diff_len as usize, m.extra_len as usize);
        if let Some(last) = out.last_mut() {
            if m.diff_len > 0 && m.diff_len < PRUNE_MAX_LEN {
                let olds = &old[m.old_start as usize..m.old_start as usize + diff_len];
                let news = &new[new_at..new_at + diff_len];
                let (mut codes, mut runs, mut previous_zero) = (0usize, 0usize, true);
                for (o, n) in olds.iter().zip(news) {
                    let zero = o == n;
                    if !zero {
                        codes += 1;
                        if previous_zero {
                            runs += 1;
                        }
                    }
                    previous_zero = zero;
                }
                let as_diff = CODE_COST * codes as f64 + RUN_COST * runs as f64 + ENTRY_COST;
                if LITERAL_COST * (diff_len as f64) < as_diff {
                    last.extra_len += m.diff_len + m.extra_len;
                    new_at += diff_len + extra_len;
                    continue;
                }
            }
        }
        out.push(m);
        new_at += diff_len + extra_len;
    }
    out
}

/// Exact matches at least this long anchor a search for diff-covered runs inside a
/// literal gap (HDiffPatch's shortest match, `kCoverMinMatchLen`).
const GAP_ANCHOR_MIN: usize = 5;
/// How far from a neighbouring match's diagonal (old offset − new offset) a gap is
/// searched for anchors, in old bytes either side.
const GAP_SEARCH_RADIUS: usize = 1024;
/// Candidates examined per anchor lookup in the gap's hash chains.
const GAP_CHAIN_STEPS: usize = 16;
/// An extension inside a gap stops this many bytes after its best end, so that trying
/// many anchors in a long gap stays linear in the gap's length.
const GAP_EXTEND_LOOKAHEAD: usize = 256;

/// Order-1 byte model: estimated compressed bytes of a byte after a given byte, from
/// bigram counts (as HDiffPatch's `TCompressDetect` judges covers). It knows nothing of
/// the old bytes the literal stream is compressed against, so it overestimates literal
/// bytes; scaled down to the measured mean `LITERAL_COST` instead, it covered less and
/// gave deltas up to 2.1% larger on the static-OpenSSL tune pairs
/// (docs/delta-bench.txt, session 12).
struct Order1Cost {
    /// Cost in bytes, indexed by (previous byte) * 256 + byte.
    cost: Vec<f32>,
}

impl Order1Cost {
    /// The model of `bytes`: bigram counts with add-half smoothing.
    fn from_bytes(bytes: &[u8]) -> Self {
        let mut pairs = vec![0u32; 256 * 256];
        let mut previous = 0u8;
        for &byte in bytes {
            pairs[usize::from(previous) * 256 + usize::from(byte)] += 1;
            previous = byte;
        }
        let mut cost = vec![0f32; 256 * 256];
        for (row, counts) in pairs.chunks(256).enumerate() {
            let total: f64 = counts.iter().map(|&c| f64::from(c)).sum::<f64>() + 128.0;
            for (b, &c) in counts.iter().enumerate() {
                cost[row * 256 + b] = (-((f64::from(c) + 0.5) / total).log2() / 8.0) as f32;
            }
        }
        Order1Cost { cost }
    }

    fn byte(&self, previous: u8, byte: u8) -> f32 {
        self.cost[usize::from(previous) * 256 + usize::from(byte)]
    }

    /// Estimated cost of `bytes` sent after `previous`.
    fn bytes(&self, mut previous: u8, bytes: &[u8]) -> f64 {
        let mut sum = 0f64;
        for &byte in bytes {
            sum += f64::from(self.byte(previous, byte));
            previous = byte;
        }
        sum
    }
}

/// A stretch of a literal gap to send as diff bytes: new offset, old offset, length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct GapCover {
    new_start: usize,
    old_start: usize,
    len: usize,
}

/// Hash chains of 4-byte keys over one old window, reused across gaps.
#[derive(Default)]
struct WindowChains {
    start: usize,
    head: Vec<u32>,
    previous: Vec<u32>,
    bits: u32,
}

const NO_POSITION: u32 = u32::MAX;

fn key_hash(bytes: &[u8], bits: u32) -> usize {
    let key = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    (key.wrapping_mul(0x9e37_79b1) >> (32 - bits)) as usize
}

impl WindowChains {
    fn index(&mut self, old: &[u8], window: std::ops::Range<usize>) {
        let len = window.len();
        self.start = window.start;
        self.bits = (usize::BITS - len.max(16).leading_zeros()).clamp(4, 20);
        self.head.clear();
        self.head.resize(1 << self.bits, NO_POSITION);
        self.previous.clear();
        self.previous.resize(len, NO_POSITION);
        for at in 0..len.saturating_sub(3) {
            let h = key_hash(&old[window.start + at..], self.bits);
            self.previous[at] = self.head[h];
            self.head[h] = at as u32;
        }
    }

    /// The best exact match of `pattern` (at least `GAP_ANCHOR_MIN` bytes) in the window,
    /// as (old offset, length): the longest, the nearest to `expected` among equals.
    fn best_match(&self, old: &[u8], pattern: &[u8], expected: usize) -> Option<(usize, usize)> {
        if pattern.len() < GAP_ANCHOR_MIN || self.previous.is_empty() {
            return None;
        }
        let mut at = self.head[key_hash(pattern, self.bits)];
        let mut best: Option<(usize, usize)> = None;
        for _ in 0..GAP_CHAIN_STEPS {
            if at == NO_POSITION {
                break;
            }
            let old_at = self.start + at as usize;
            let len = common_prefix_len(pattern, &old[old_at..]);
            let better = match best {
                None => true,
                Some((b, blen)) => {
                    len > blen || (len == blen && old_at.abs_diff(expected) < b.abs_diff(expected))
                }
            };
            if len >= GAP_ANCHOR_MIN && better {
                best = Some((old_at, len));
            }
            at = self.previous[at as usize];
        }
        best
    }
}

/// Estimated cost of `new` sent as diff bytes against `old` (same length): non-zero
/// bytes under the codes model, one run pair per non-zero run, and one control entry.
fn diff_cost(old: &[u8], new: &[u8], codes: &Order1Cost) -> f64 {
    let (mut cost, mut previous_code, mut previous_zero) = (ENTRY_COST, 0u8, true);
    for (o, n) in old.iter().zip(new) {
        let d = n.wrapping_sub(*o);
        if d != 0 {
            cost += f64::from(codes.byte(previous_code, d));
            if previous_zero {
                cost += RUN_COST;
            }
            previous_code = d;
        }
        previous_zero = d == 0;
    }
    cost
}

/// Diff-covered stretches inside one literal gap `new[gap]`, found from exact matches of
/// `GAP_ANCHOR_MIN` bytes or more near the given diagonals (old − new offsets), each
/// extended both ways (bsdiff's rule) inside the gap and kept when the order-1 estimate
/// says it costs less as diff bytes plus a control entry than as literal bytes.
fn covers_in_gap(
    old: &[u8],
    new: &[u8],
    gap: std::ops::Range<usize>,
    diagonals: &[i64],
    models: (&Order1Cost, &Order1Cost),
    chains: &mut [WindowChains; 2],
) -> Vec<GapCover> {
    let (literals, codes) = models;
    let mut windows = 0;
    let mut window_diagonals = [0i64; 2];
    for &d in diagonals.iter().take(2) {
        let low = (gap.start as i64 + d - GAP_SEARCH_RADIUS as i64).clamp(0, old.len() as i64);
        let high = (gap.end as i64 + d + GAP_SEARCH_RADIUS as i64).clamp(0, old.len() as i64);
        if high - low >= GAP_ANCHOR_MIN as i64 {
            chains[windows].index(old, low as usize..high as usize);
            window_diagonals[windows] = d;
            windows += 1;
        }
    }
    let mut out = Vec::new();
    let (mut cursor, mut at) = (gap.start, gap.start);
    while at + GAP_ANCHOR_MIN <= gap.end {
        let pattern = &new[at..gap.end];
        let mut best: Option<(usize, usize)> = None;
        for (window, &d) in chains[..windows].iter().zip(&window_diagonals) {
            let expected = (at as i64 + d).max(0) as usize;
            if let Some(found) = window.best_match(old, pattern, expected) {
                if best.is_none_or(|b| found.1 > b.1) {
                    best = Some(found);
                }
            }
        }
        let Some((old_at, len)) = best else {
            at += 1;
            continue;
        };
        // Extend the anchor backwards to the literal cursor and forwards to the gap end.
        let back_limit = (at - cursor).min(old_at);
        let back = scan_similar_near(
            new[at - back_limit..at].iter().rev(),
            old[old_at - back_limit..old_at].iter().rev(),
        );
        let forward_end = (gap.end - at).min(old.len() - old_at);
        let forward = len
            + scan_similar_near(
                new[at + len..at + forward_end].iter(),
                old[old_at + len..old_at + forward_end].iter(),
            );
        let (new_start, old_start, cover_len) = (at - back, old_at - back, back + forward);
        let new_bytes = &new[new_start..new_start + cover_len];
        let previous = new_start.checked_sub(1).map_or(0, |p| new[p]);
        let as_literal = literals.bytes(previous, new_bytes);
        let as_diff = diff_cost(&old[old_start..old_start + cover_len], new_bytes, codes);
        if as_diff < as_literal {
            out.push(GapCover {
                new_start,
                old_start,
                len: cover_len,
            });
            cursor = new_start + cover_len;
            at = cursor;
        } else {
            at += len;
        }
    }
    out
}

/// Second pass over the literal gaps left by the scan (`matches` tile `new`): splits a
/// gap into literal + diff-covered stretches + literal where short exact matches near
/// the neighbouring matches' diagonals, extended, cost less as diff bytes than as
/// literals by an order-1 estimate. Every existing match keeps its diff run; only
/// literal bytes change hands.
///
/// Why: the bsdiff scan ignores exact matches of `SMALL_MATCH` bytes or fewer, because
/// taking one switches the scan's alignment away from the long approximate one it is
/// following (docs/delta-bench.txt, session 11). Inside a gap there is no alignment to
/// lose, and HDiffPatch covers such stretches from 5-byte matches on.
pub fn cover_literal_gaps(matches: Vec<Match>, old: &[u8], new: &[u8]) -> Vec<Match> {
    if old.len() < GAP_ANCHOR_MIN {
        return matches;
    }
    let (literal_model, code_model) = stream_models(&matches, old, new);
    let mut chains: [WindowChains; 2] = Default::default();
    let mut out: Vec<Match> = Vec::with_capacity(matches.len());
    let mut new_at = 0usize;
    for (k, m) in matches.iter().enumerate() {
        let gap_start = new_at + m.diff_len as usize;
        let gap = gap_start..gap_start + m.extra_len as usize;
        new_at = gap.end;
        let mut diagonals = Vec::with_capacity(2);
        if m.diff_len > 0 {
            diagonals.push((m.old_start + m.diff_len) as i64 - gap.start as i64);
        }
        if let Some(next) = matches.get(k + 1).filter(|n| n.diff_len > 0) {
            let d = next.old_start as i64 - gap.end as i64;
            if !diagonals.contains(&d) {
                diagonals.push(d);
            }
        }
        let covers = if gap.len() >= GAP_ANCHOR_MIN && !diagonals.is_empty() {
            covers_in_gap(
                old,
                new,
                gap.clone(),
                &diagonals,
                (&literal_model, &code_model),
                &mut chains,
            )
        } else {
            Vec::new()
        };
        let mut current = Match {
            extra_len: m.extra_len,
            ..*m
        };
        for cover in covers {
            current.extra_len = (cover.new_start - (gap.end - current.extra_len as usize)) as u64;
            let rest = gap.end - (cover.new_start + cover.len);
            out.push(current);
            current = Match {
                old_start: cover.old_start as u64,
                diff_len: cover.len as u64,
                extra_len: rest as u64,
            };
        }
        out.push(current);
    }
    out
}

/// Order-1 models of the literal bytes and of the non-zero diff bytes of `matches`.
fn stream_models(matches: &[Match], old: &[u8], new: &[u8]) -> (Order1Cost, Order1Cost) {
    let mut literals = Vec::new();
    let mut codes = Vec::new();
    let mut new_at = 0usize;
    for m in matches {
        let (diff_len, extra_len) = (m.diff_len as usize, m.extra_len as usize);
        let olds = old
            .get(m.old_start as usize..m.old_start as usize + diff_len)
            .unwrap_or_default();
        codes.extend(
            new[new_at..new_at + diff_len]
                .iter()
                .zip(olds)
                .map(|(n, o)| n.wrapping_sub(*o))
                .filter(|&d| d != 0),
        );
        new_at += diff_len;
        literals.extend_from_slice(&new[new_at..new_at + extra_len]);
        new_at += extra_len;
    }
    (
        Order1Cost::from_bytes(&literals),
        Order1Cost::from_bytes(&codes),
    )
}

struct Scan<'a> {
    old: &'a [u8],
    new: &'a [u8],
    index: &'a OldIndex<'a>,
    /// See [`ScanProfile::mismatch_count`].
    mismatch_count: usize,
    /// Old offset, new offset and length of the previous exact match, and how many
    /// similar bytes precede it.
    i0: usize,
    j0: usize,
    n0: usize,
    b0: usize,
}

impl Scan<'_> {
    /// The longest match of the new bytes from offset `j` on, as (old offset, length).
    fn longest_match_at(&self, j: usize, cache: &mut LookupCache) -> (usize, usize) {
        if let Some(found) = cache.get(j) {
            return found;
        }
        let found = self.index.longest_match(&self.new[j..]);
        cache.put(j, found);
        found
    }

    /// The next exact match worth switching to, as (old offset, new offset, length);
    /// the end of the input counts as a final empty match.
    fn search_next(&mut self, cache: &mut LookupCache) -> Option<(usize, usize, usize)> {
        if self.j0 == self.new.len() && self.b0 == 0 {
            return None;
        }
        let mut j = self.j0 + self.n0;
        let mut k = j;
        let mut m = 0;
        while j < self.new.len().saturating_sub(SMALL_MATCH) {
            let (i, n) = self.longest_match_at(j, cache);
            // Count how many of these bytes the current alignment already predicts.
            while k < j + n {
                let i = self.i0.saturating_add(k - self.j0);
                if i < self.old.len() && self.old[i] == self.new[k] {
                    m += 1;
                }
                k += 1;
            }
            if n == 0 {
                j += 1;
                m = 0;
            } else if m == n || n <= SMALL_MATCH {
                j += n;
                m = 0;
            } else if n <= m + self.mismatch_count {
                // Mostly predicted by the current alignment: skip ahead, by binary
                // search over the suffix when the match is long.
                let next = if n <= LONG_SUFFIX {
                    j + 1
                } else {
                    let (mut x, mut y) = (0, n);
                    while x < y {
                        let z = x + (y - x) / 2;
                        let (iz, nz) = self.longest_match_at(j + z, cache);
                        if i + n == iz + nz && j + n == j + z + nz {
                            x = z + 1;
                        } else {
                            y = z;
                        }
                    }
                    j + x.max(1)
                };
                let mut i = self.i0.saturating_add(j - self.j0);
                while j < next {
                    if i < self.old.len() && self.old[i] == self.new[j] {
                        m -= 1;
                    }
                    i += 1;
                    j += 1;
                }
            } else {
                return Some((i, j, n));
            }
        }
        Some((self.old.len(), self.new.len(), 0))
    }

    /// Splits the gap between the previous match and the next one into bytes that
    /// extend the previous match forwards (`a0`) and the next one backwards (`b`).
    fn shrink_gap(&self, i: usize, j: usize) -> (usize, usize) {
        let gap = &self.new[self.j0 + self.n0..j];
        let suffix = &self.old[(self.i0 + self.n0).min(self.old.len())..];
        let prefix = &self.old[..i];
        let min_equal = if gap.len() >= LONG_GAP {
            LONG_GAP_MIN_EQUAL_PERMILLE
        } else {
            MIN_EQUAL_PERMILLE
        };
        let mut a0 = scan_similar(gap.iter(), suffix.iter(), min_equal, usize::MAX);
        let mut b = scan_similar(gap.iter().rev(), prefix.iter().rev(), min_equal, usize::MAX);
        if a0 + b > gap.len() {
            let n = a0 + b - gap.len();
            let xs = gap[gap.len() - b..a0].iter();
            let ys = suffix[gap.len() - b..a0].iter();
            let zs = prefix[prefix.len() - b..prefix.len() - b + n].iter();
            let split = scan_divide(xs, ys, zs);
            a0 -= n - split;
            b -= split;
        }
        (a0, b)
    }
}

/// Length of the prefix where equal bytes most exceed `min_equal` permille of its
/// length (an equal byte scores `1000 - min_equal`, a different one `-min_equal`; at
/// 500 that is bsdiff's "matches outnumber mismatches the most").
///
/// It gives up `give_up_after` bytes past the best length so far (`usize::MAX`: never).
fn scan_similar<'a, I: Iterator<Item = &'a u8>>(
    xs: I,
    ys: I,
    min_equal: isize,
    give_up_after: usize,
) -> usize {
    let (mut best_len, mut matched, mut best_score) = (0, 0isize, 0isize);
    for (n, (x, y)) in (1..).zip(xs.zip(ys)) {
        matched += if x == y { 1000 - min_equal } else { -min_equal };
        if matched > best_score {
            best_len = n;
            best_score = matched;
        } else if n - best_len > give_up_after {
            break;
        }
    }
    best_len
}

/// `scan_similar` at bsdiff's share, giving up `GAP_EXTEND_LOOKAHEAD` bytes after the
/// best length so far.
fn scan_similar_near<'a, I: Iterator<Item = &'a u8>>(xs: I, ys: I) -> usize {
    scan_similar(xs, ys, MIN_EQUAL_PERMILLE, GAP_EXTEND_LOOKAHEAD)
}

/// Where an overlap between a forward and a backward extension is best split.
fn scan_divide<'a, I: Iterator<Item = &'a u8>>(xs: I, ys: I, zs: I) -> usize {
    let (mut best, mut score, mut best_score) = (0, 0isize, 0isize);
    for (n, ((x, y), z)) in (1..).zip(xs.zip(ys).zip(zs)) {
        score += isize::from(x == y) - isize::from(x == z);
        if score > best_score {
            best = n;
            best_score = score;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiles(new_len: usize, matches: &[Match]) -> bool {
        matches
            .iter()
            .map(|m| m.diff_len + m.extra_len)
            .sum::<u64>()
            == new_len as u64
    }

    /// Profiles scanning together (sharing their lookups) find exactly what each finds
    /// alone, in either order, on a pair where they find different matches.
    #[test]
    fn profiles_sharing_lookups_find_what_each_finds_alone() {
        // Pseudo-random old bytes over small alphabets (many alternative exact matches);
        // the new bytes copy them with scattered one-byte edits, an insertion and a
        // deletion. On some of these pairs the profiles' thresholds decide differently.
        let mut byte = xorshift(0x2545_f491);
        // A pseudo-random number below `n` (≤ 2^24).
        let mut below = |n: usize| u32::from_le_bytes([byte(), byte(), byte(), 0]) as usize % n;
        let mut differing = 0;
        for (alphabet, edits) in [(2, 4_000), (3, 8_000), (4, 2_000), (7, 12_000)] {
            let old: Vec<u8> = (0..100_000).map(|_| below(alphabet) as u8).collect();
            let mut new = old.clone();
            for _ in 0..edits {
                let at = below(new.len());
                new[at] = new[at].wrapping_add(1);
            }
            new.splice(30_000..30_000, old[60_000..61_000].iter().copied());
            new.drain(80_000..80_300);
            let index = OldIndex::with_pieces(&old, 2, 10_000);
            let alone: Vec<Vec<Match>> = SCAN_PROFILES
                .iter()
                .map(|&profile| find_matches(&old, &index, &new, profile))
                .collect();
            differing += usize::from(alone[0] != alone[1]);
            assert_eq!(find_matches_each(&old, &index, &new, &SCAN_PROFILES), alone);
            let reversed: Vec<ScanProfile> = SCAN_PROFILES.iter().rev().copied().collect();
            let mut expected = alone.clone();
            expected.reverse();
            assert_eq!(find_matches_each(&old, &index, &new, &reversed), expected);
            assert_eq!(
                find_matches_each(&old, &index, &new, &[ScanProfile::Steady]),
                vec![alone[1].clone()]
            );
        }
        assert!(
            differing > 0,
            "the profiles must differ on some pair for this to test anything"
        );
    }

    #[test]
    fn matches_tile_the_new_slice_and_stay_inside_old() {
        let old: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut new = old.clone();
        new.splice(5_000..5_000, b"inserted literal bytes".iter().copied());
        new.drain(12_000..12_500);
        new[15_000] ^= 0x55;
        let cases: [(&str, &[u8], &[u8]); 4] = [
            ("edited copy", &old, &new),
            ("identical", &old, &old),
            ("empty new", &old, &[]),
            ("one byte", &old, &[42]),
        ];
        // One suffix array, and three pieces overlapping by less than the distance
        // between edits, so that matches must be stitched across piece edges.
        for (pieces, overlap) in [(1, 0), (3, 1_000)] {
            let index = OldIndex::with_pieces(&old, pieces, overlap);
            for ((name, old_bytes, new_bytes), profile) in cases
                .into_iter()
                .flat_map(|case| SCAN_PROFILES.map(|profile| (case, profile)))
            {
                let matches = find_matches(old_bytes, &index, new_bytes, profile);
                assert!(
                    tiles(new_bytes.len(), &matches),
                    "case `{name}`, {pieces} pieces, {profile:?}: matches must tile the new slice"
                );
                for m in &matches {
                    assert!(
                        m.old_start + m.diff_len <= old_bytes.len() as u64,
                        "case `{name}`, {pieces} pieces, {profile:?}: {m:?} reads past the old slice"
                    );
                }
            }
            let identical = find_matches(&old, &index, &old, ScanProfile::Eager);
            let literal: u64 = identical.iter().map(|m| m.extra_len).sum();
            assert_eq!(
                literal, 0,
                "an identical image needs no literal bytes ({pieces} pieces)"
            );
        }
    }

    /// Patches stay byte-identical only if the LCP-aware search picks exactly what
    /// `SuffixArray::search_lcp` picks, ties included.
    #[test]
    fn longest_match_agrees_with_the_suffix_array_crate() {
        // A small alphabet with repeated blocks gives long matches and many ties.
        let mut state = 0x2545_f491_u32;
        let mut random = move || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state
        };
        let mut old: Vec<u8> = (0..6_000).map(|_| b"abcd"[random() as usize % 4]).collect();
        let block = old[100..900].to_vec();
        old.extend_from_slice(&block);
        old.extend_from_slice(&[0xff, 7, 7]);
        let index = PieceIndex::build(&old);
        let mut sa = SuffixArray::new(&old);
        sa.enable_buckets();
        let mut patterns: Vec<Vec<u8>> = vec![
            vec![b'a'],
            vec![0xfe],
            vec![0xff],
            vec![0xff, 7, 7],
            vec![0xff, 7, 7, 7],
            vec![7, 0],
            block.clone(),
            old[old.len() - 40..].to_vec(),
        ];
        for _ in 0..2_000 {
            let start = random() as usize % old.len();
            let len = 1 + random() as usize % 300;
            let mut pattern = old[start..(start + len).min(old.len())].to_vec();
            if random() % 2 == 0 {
                let at = random() as usize % pattern.len();
                pattern[at] = b"abcdx"[random() as usize % 5];
            }
            patterns.push(pattern);
        }
        for pattern in &patterns {
            let expected = sa.search_lcp(pattern);
            assert_eq!(
                index.longest_match(pattern),
                (expected.start, expected.end - expected.start),
                "pattern {pattern:?} must find the same match as SuffixArray::search_lcp"
            );
        }
    }

    /// Pseudo-random bytes (xorshift32) from `seed`.
    fn xorshift(mut state: u32) -> impl FnMut() -> u8 {
        move || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        }
    }

    /// A table between two unchanged blocks where every 20-byte entry changed in 11 of
    /// its bytes: no exact match inside it, 45% of its bytes equal on the alignment of
    /// the block before it. As a gap of at least `LONG_GAP` it is covered as diff bytes; the
    /// same table shorter than `LONG_GAP` stays literal (bsdiff's rule).
    #[test]
    fn a_long_gap_with_few_equal_bytes_is_diffed_and_a_short_one_stays_literal() {
        let mut random = xorshift(0x9e37_79b9);
        for (table_len, literal_at_most, literal_at_least) in [
            (4 * LONG_GAP, LONG_GAP / 8, 0),
            (LONG_GAP / 2, usize::MAX, LONG_GAP / 4),
        ] {
            let old: Vec<u8> = (0..8192 + table_len + 8192).map(|_| random()).collect();
            let mut new = old.clone();
            for (k, byte) in new[8192..8192 + table_len].iter_mut().enumerate() {
                if k % 20 < 11 {
                    *byte ^= 0x5a;
                }
            }
            // Bytes inserted before each unchanged block put it on an alignment of its
            // own, so that the scan takes both as matches and the table is the gap.
            new.splice(8192 + table_len..8192 + table_len, [1, 2, 3, 4, 5, 6, 7]);
            new.splice(0..0, [9, 9, 9, 9, 9]);
            let index = OldIndex::build(&old, 1);
            let matches = find_matches(&old, &index, &new, ScanProfile::Eager);
            assert!(
                tiles(new.len(), &matches),
                "matches must tile the new image"
            );
            let literal = matches.iter().map(|m| m.extra_len).sum::<u64>() as usize;
            assert!(
                literal <= literal_at_most && literal >= literal_at_least,
                "a {table_len}-byte table with 45% equal bytes: {literal} literal bytes, \
                 expected between {literal_at_least} and {literal_at_most}"
            );
        }
    }

    /// A gap of random bytes holding, 3 bytes off the neighbours' diagonal, a 200-byte
    /// copy of old bytes with every 16th byte changed (no exact match longer than 15
    /// bytes): the pass covers it as diff bytes. A gap holding only a 6-byte copy stays
    /// literal: a control entry costs more than the 6 literal bytes.
    #[test]
    fn a_literal_gap_with_a_short_match_near_the_diagonal_is_covered_only_when_cheaper() {
        let mut random = xorshift(0x1234_5678);
        let old: Vec<u8> = (0..8192).map(|_| random()).collect();
        for (copy_len, covered_at_least, covered_at_most) in [(200, 190, 210), (6, 0, 0)] {
            let mut new = old[..2000].to_vec();
            new.extend((0..200).map(|_| random()));
            let copy_at = new.len();
            new.extend(
                old[copy_at + 3..copy_at + 3 + copy_len]
                    .iter()
                    .enumerate()
                    .map(|(k, &b)| if k % 16 == 15 { b ^ 0x21 } else { b }),
            );
            new.extend((0..200).map(|_| random()));
            let gap_len = new.len() - 2000;
            new.extend_from_slice(&old[4000..6000]);
            let matches = vec![
                Match {
                    old_start: 0,
                    diff_len: 2000,
                    extra_len: gap_len as u64,
                },
                Match {
                    old_start: 4000,
                    diff_len: 2000,
                    extra_len: 0,
                },
            ];
            let split = cover_literal_gaps(matches.clone(), &old, &new);
            assert!(tiles(new.len(), &split), "matches must tile the new image");
            assert!(
                split
                    .iter()
                    .all(|m| m.old_start + m.diff_len <= old.len() as u64),
                "matches must stay inside the old image: {split:?}"
            );
            let literal = split.iter().map(|m| m.extra_len).sum::<u64>() as usize;
            let covered = gap_len - literal;
            assert!(
                (covered_at_least..=covered_at_most).contains(&covered),
                "a gap holding a {copy_len}-byte near copy: {covered} bytes covered, \
                 expected {covered_at_least}..={covered_at_most} ({split:?})"
            );
            assert_eq!(
                (split[0], split[split.len() - 1]),
                (
                    Match {
                        extra_len: split[0].extra_len,
                        ..matches[0]
                    },
                    Match {
                        extra_len: split[split.len() - 1].extra_len,
                        ..matches[1]
                    }
                ),
                "the scan's matches keep their diff runs"
            );
        }
    }

    #[test]
    fn a_short_match_off_the_alignment_moves_the_eager_scan_and_not_the_steady_one() {
        let mut random = xorshift(0x1234_5678);
        let mut old: Vec<u8> = (0..60_000).map(|_| random()).collect();
        // Far from where it is used, old holds a near-copy of the 20 bytes at 30,000:
        // 14 of them equal. The new image is old with those 20 bytes replaced by the
        // near-copy, so at 30,001 (the first changed byte) the scan finds an exact 19-byte
        // match 20,000 bytes away that beats its alignment by 6 bytes: more than
        // `Eager`'s 4, not more than `Steady`'s 6.
        let (at, far, len) = (30_000usize, 10_000usize, 20usize);
        let mut copy = old[at..at + len].to_vec();
        for k in [1, 4, 8, 11, 15, 18] {
            copy[k] ^= 0xa5;
        }
        old[far..far + len].copy_from_slice(&copy);
        // Bytes around the copy differ so that the exact match is exactly `len` long.
        old[far - 1] = old[at - 1] ^ 0xff;
        old[far + len] = old[at + len] ^ 0xff;
        let mut new = old.clone();
        new[at..at + len].copy_from_slice(&copy);
        let index = OldIndex::build(&old, 1);
        // Whether a match reads old bytes off the diagonal (old offset = new offset).
        let reads_far = |profile| {
            let mut new_at = 0u64;
            find_matches(&old, &index, &new, profile).iter().any(|m| {
                let off_diagonal = m.diff_len > 0 && m.old_start != new_at;
                new_at += m.diff_len + m.extra_len;
                off_diagonal
            })
        };
        assert!(
            reads_far(ScanProfile::Eager),
            "the eager scan must take the 19-byte match off its alignment"
        );
        assert!(
            !reads_far(ScanProfile::Steady),
            "the steady scan must stay on its alignment"
        );
    }

    #[test]
    fn empty_old_makes_everything_literal() {
        let index = OldIndex::build(&[], 2);
        assert_eq!(
            find_matches(&[], &index, b"abc", ScanProfile::Steady),
            vec![Match {
                old_start: 0,
                diff_len: 0,
                extra_len: 3
            }]
        );
    }
}
