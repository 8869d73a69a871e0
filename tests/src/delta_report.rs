//! Pure parts of `delta-bench`'s per-family report (issue 13): the corpus MANIFEST with its
//! `family` and `half` columns, geometric means, and our patch size against the best
//! other tool.
//!
//! A MANIFEST line is `<pair>/<old|new> <size> <sha256> [<family> <half>]`: the first three
//! columns are those of the shared corpus (`../shared/delta-corpus/fetch.sh`), the last two
//! are written by `tests/delta-corpus/fetch.sh`. Blank lines and `#` comments are skipped.

use std::collections::BTreeMap;
use std::fmt;

/// Which half of the corpus a pair belongs to: tune the engine on `Tune` only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Half {
    Tune,
    HeldOut,
}

impl Half {
    pub const ALL: [Half; 2] = [Half::Tune, Half::HeldOut];

    pub fn parse(text: &str) -> Option<Half> {
        match text {
            "tune" => Some(Half::Tune),
            "held-out" => Some(Half::HeldOut),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Half::Tune => "tune",
            Half::HeldOut => "held-out",
        }
    }
}

impl fmt::Display for Half {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The labels a MANIFEST gives a pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairLabel {
    pub family: String,
    pub half: Half,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("MANIFEST line {line}: expected `<pair>/<old|new> <size> <sha256> [<family> <half>]`, got {text:?}")]
    Malformed { line: usize, text: String },
    #[error("MANIFEST line {line}: half must be `tune` or `held-out`, got {half:?}")]
    BadHalf { line: usize, half: String },
    #[error("MANIFEST line {line}: pair {pair} labelled {got_family}/{got_half} here but {family}/{half} before")]
    Conflict {
        line: usize,
        pair: String,
        family: String,
        half: Half,
        got_family: String,
        got_half: Half,
    },
}

/// The family and half of every pair the MANIFEST labels. Lines of the shared corpus
/// (three columns) label nothing: its MANIFEST gives an empty map.
pub fn parse_manifest(text: &str) -> Result<BTreeMap<String, PairLabel>, ManifestError> {
    let mut labels: BTreeMap<String, PairLabel> = BTreeMap::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = trimmed.split_whitespace().collect();
        let malformed = || ManifestError::Malformed {
            line,
            text: raw.to_string(),
        };
        let pair = match fields[0].rsplit_once('/') {
            Some((pair, "old" | "new")) if !pair.is_empty() => pair,
            _ => return Err(malformed()),
        };
        match fields.len() {
            3 => continue,
            5 => {}
            _ => return Err(malformed()),
        }
        let half = Half::parse(fields[4]).ok_or_else(|| ManifestError::BadHalf {
            line,
            half: fields[4].to_string(),
        })?;
        let label = PairLabel {
            family: fields[3].to_string(),
            half,
        };
        match labels.get(pair) {
            Some(known) if *known != label => {
                return Err(ManifestError::Conflict {
                    line,
                    pair: pair.to_string(),
                    family: known.family.clone(),
                    half: known.half,
                    got_family: label.family,
                    got_half: label.half,
                })
            }
            Some(_) => {}
            None => {
                labels.insert(pair.to_string(), label);
            }
        }
    }
    Ok(labels)
}

/// The geometric mean of positive values; `None` when there are none or one is not
/// positive (a zero-byte patch has no logarithm).
pub fn geomean(values: &[f64]) -> Option<f64> {
    if values.is_empty() || values.iter().any(|v| v.is_nan() || *v <= 0.0) {
        return None;
    }
    let sum: f64 = values.iter().map(|v| v.ln()).sum();
    Some((sum / values.len() as f64).exp())
}

/// Our patch size over the smallest patch of any other tool on one pair, with that tool:
/// below 1 we win, above 1 we lose. `None` when either side is missing.
pub fn best_other_ratio<'a>(ours: &str, sizes: &[(&'a str, u64)]) -> Option<(f64, &'a str)> {
    let our_len = sizes.iter().find(|(tool, _)| *tool == ours)?.1;
    let (best_tool, best_len) = sizes
        .iter()
        .filter(|(tool, _)| *tool != ours)
        .min_by_key(|(_, len)| *len)?;
    if *best_len == 0 {
        return None;
    }
    Some((our_len as f64 / *best_len as f64, best_tool))
}

/// Max and geometric mean of per-pair ratios.
pub fn ratio_summary(ratios: &[f64]) -> Option<(f64, f64)> {
    let max = ratios
        .iter()
        .copied()
        .fold(None, |m: Option<f64>, r| Some(m.map_or(r, |m| m.max(r))))?;
    Some((max, geomean(ratios)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LABELLED: &str = "\
# pair/side size sha256 family half
crypto-a/old 10 aa x86-64-rust-openssl tune
crypto-a/new 11 bb x86-64-rust-openssl tune

crypto-b/old 10 cc x86-64-rust-openssl held-out
crypto-b/new 12 dd x86-64-rust-openssl held-out
kernel-arm64/old 30 ee arm64-kernel tune
kernel-arm64/new 31 ff arm64-kernel tune
";

    #[test]
    fn manifest_labels_each_pair_with_its_family_and_half() {
        let labels = parse_manifest(LABELLED).unwrap();
        assert_eq!(labels.len(), 3);
        assert_eq!(
            labels["crypto-b"],
            PairLabel {
                family: "x86-64-rust-openssl".into(),
                half: Half::HeldOut
            }
        );
        assert_eq!(labels["kernel-arm64"].family, "arm64-kernel");
        assert_eq!(labels["kernel-arm64"].half, Half::Tune);
    }

    #[test]
    fn shared_manifest_labels_nothing() {
        let shared = "numpy-openblas/new 24996648 ab12\nnumpy-openblas/old 24996640 cd34\n";
        assert_eq!(parse_manifest(shared).unwrap(), BTreeMap::new());
    }

    #[test]
    fn manifest_rejects_unknown_half_wrong_columns_and_conflicts() {
        assert_eq!(
            parse_manifest("p/old 1 aa fam train\n"),
            Err(ManifestError::BadHalf {
                line: 1,
                half: "train".into()
            })
        );
        assert!(matches!(
            parse_manifest("p/old 1 aa fam\n"),
            Err(ManifestError::Malformed { line: 1, .. })
        ));
        assert!(matches!(
            parse_manifest("p/middle 1 aa fam tune\n"),
            Err(ManifestError::Malformed { line: 1, .. })
        ));
        assert!(matches!(
            parse_manifest("p/old 1 aa fam tune\np/new 1 aa fam held-out\n"),
            Err(ManifestError::Conflict { line: 2, .. })
        ));
    }

    #[test]
    fn geomean_is_the_nth_root_of_the_product() {
        let g = geomean(&[1.0, 4.0, 16.0]).unwrap();
        assert!((g - 4.0).abs() < 1e-9, "{g}");
        let g = geomean(&[100.0, 10000.0]).unwrap();
        assert!((g - 1000.0).abs() < 1e-6, "{g}");
        assert_eq!(geomean(&[]), None);
        assert_eq!(geomean(&[2.0, 0.0]), None);
        assert_eq!(geomean(&[2.0, f64::NAN]), None);
    }

    #[test]
    fn best_other_ratio_compares_ours_with_the_smallest_other_patch() {
        let sizes = [("ours", 90), ("bsdiff", 120), ("hdiff", 100), ("zstd", 150)];
        let (ratio, tool) = best_other_ratio("ours", &sizes).unwrap();
        assert!((ratio - 0.9).abs() < 1e-12, "{ratio}");
        assert_eq!(tool, "hdiff");
        // Our own patch never counts as the best other one, even when it is the smallest.
        let sizes = [("ours", 200), ("hdiff", 100)];
        assert_eq!(best_other_ratio("ours", &sizes), Some((2.0, "hdiff")));
        assert_eq!(best_other_ratio("ours", &[("ours", 1)]), None);
        assert_eq!(best_other_ratio("ours", &[("hdiff", 1)]), None);
    }

    #[test]
    fn ratio_summary_gives_the_worst_pair_and_the_geomean() {
        let (max, geo) = ratio_summary(&[0.5, 2.0, 1.0]).unwrap();
        assert!((max - 2.0).abs() < 1e-12);
        assert!((geo - 1.0).abs() < 1e-12);
        assert_eq!(ratio_summary(&[]), None);
    }
}
