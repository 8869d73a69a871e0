//! `delta-bench`: our delta engine against the tools a user could pick instead, on real
//! image pairs, in one run.
//!
//! Usage: `delta-bench [--synthetic-mib N] [--tools a,b,...] [--repeat N] [--half H] CORPUS_DIR`
//!
//! Every subdirectory of CORPUS_DIR holding `old` and `new` is a pair. When
//! `CORPUS_DIR/MANIFEST` labels pairs with a family and a half (`tune` or `held-out`, as
//! `tests/delta-corpus/fetch.sh` writes it), the report adds, for each half separately, the
//! geometric mean of every tool's patch size per family, our patch size over the best other
//! tool's on every pair (its max and geometric mean per family), and the pairs we lose on;
//! `--half H` benches only that half's pairs. With
//! `--synthetic-mib N`, a firmware-like pair of about N MiB is generated (once) into
//! `CORPUS_DIR/synthetic-<N>mib`. For every pair and tool the diff and the apply run as
//! separate processes under `/usr/bin/time` (wall time and peak RSS), and the applied
//! output must be byte-identical to `new`. The machine may be shared, so each command
//! runs `--repeat` times (default 3) and the fastest run counts (peak RSS: the largest). Our engine runs as the real `ota-server` and
//! `ota-agent` binaries, found next to this one (build them with
//! `cargo build --release -p ota-server -p ota-agent -p ota-tests`), as the server ships
//! deltas (`--detached-digests`, the default `[delta] detached_digests`: the two images'
//! SHA-256s are in the signed metadata, not in the container) and applied as the agent
//! applies them, given those digests. Install the other tools with
//! `deploy/bench-tools.sh`.

use anyhow::{bail, Context, Result};
use ota_tests::delta_report::{self, Half, PairLabel};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

const OURS: &str = "ota (ours)";
const ALL_TOOLS: &[&str] = &[
    "ours",
    "qbsdiff",
    "bsdiff",
    "hdiffpatch",
    "hdiffpatch-lzma2",
    "xdelta3",
    "zstd",
];
const HDIFFPATCH_TOOL: &str = include_str!("../../../deploy/hdiffpatch-tool.py");
const APPLY_RSS_GOAL_MIB: f64 = 64.0;

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let result = if args.get(1).map(String::as_str) == Some("internal") {
        internal(&args[2..])
    } else {
        run(&args[1..])
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Subcommands this binary runs in a child process, so each has its own peak RSS.
fn internal(args: &[String]) -> Result<()> {
    let [mode, a, b, c] = args else {
        bail!("internal MODE A B C")
    };
    let read = |p: &str| std::fs::read(p).with_context(|| format!("reading {p}"));
    match mode.as_str() {
        "qbsdiff" => {
            let (old, new) = (read(a)?, read(b)?);
            let mut patch = Vec::new();
            qbsdiff::Bsdiff::new(&old, &new).compare(std::io::Cursor::new(&mut patch))?;
            std::fs::write(c, patch)?;
        }
        "qbspatch" => {
            let (old, patch) = (read(a)?, read(b)?);
            let mut out = Vec::new();
            qbsdiff::Bspatch::new(&patch)?.apply(&old, std::io::Cursor::new(&mut out))?;
            std::fs::write(c, out)?;
        }
        _ => bail!("unknown internal mode {mode}"),
    }
    Ok(())
}

struct Measured {
    seconds: f64,
    rss_mib: f64,
}

/// Runs `argv` `repeat` times; the fastest time and the largest peak RSS count.
fn measure_best(argv: &[String], scratch: &Path, repeat: usize) -> Result<Measured> {
    let mut best = measure(argv, scratch)?;
    for _ in 1..repeat {
        let next = measure(argv, scratch)?;
        best = Measured {
            seconds: best.seconds.min(next.seconds),
            rss_mib: best.rss_mib.max(next.rss_mib),
        };
    }
    Ok(best)
}

/// Runs `argv` under `/usr/bin/time`, failing when the command fails.
fn measure(argv: &[String], scratch: &Path) -> Result<Measured> {
    let time_file = scratch.join("time.txt");
    let output = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("%e %M")
        .arg("-o")
        .arg(&time_file)
        .args(argv)
        .output()
        .with_context(|| {
            format!("running {argv:?} under /usr/bin/time (install with deploy/bench-tools.sh)")
        })?;
    if !output.status.success() {
        bail!(
            "{argv:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let text = std::fs::read_to_string(&time_file)?;
    let last = text.lines().last().unwrap_or_default();
    let mut fields = last.split_whitespace();
    let seconds: f64 = fields.next().context("time output")?.parse()?;
    let rss_kib: f64 = fields.next().context("time output")?.parse()?;
    Ok(Measured {
        seconds,
        rss_mib: rss_kib / 1024.0,
    })
}

struct Row {
    key: String,
    tool: &'static str,
    patch_len: u64,
    diff: Measured,
    apply: Measured,
    identical: bool,
}

/// What the signed metadata says of a pair: the digests our applier is given.
struct Signed {
    source_sha256: String,
    target_len: String,
    target_sha256: String,
}

#[allow(clippy::too_many_arguments)]
fn tool_commands(
    tool: &str,
    old: &str,
    new: &str,
    patch: &str,
    out: &str,
    bin_dir: &Path,
    helper: &Path,
    signed: &Signed,
) -> Result<(&'static str, Vec<String>, Vec<String>)> {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let me = std::env::current_exe()?.display().to_string();
    let server = bin_dir.join("ota-server").display().to_string();
    let agent = bin_dir.join("ota-agent").display().to_string();
    let helper = helper.display().to_string();
    Ok(match tool {
        "ours" => (
            OURS,
            s(&[
                &server,
                "delta",
                "build",
                "--detached-digests",
                "--old",
                old,
                "--new",
                new,
                "--out",
                patch,
            ]),
            s(&[
                &agent,
                "delta",
                "apply",
                "--old",
                old,
                "--delta",
                patch,
                "--out",
                out,
                "--source-sha256",
                &signed.source_sha256,
                "--expect-length",
                &signed.target_len,
                "--expect-sha256",
                &signed.target_sha256,
            ]),
        ),
        "qbsdiff" => (
            "qbsdiff 1.4.4",
            s(&[&me, "internal", "qbsdiff", old, new, patch]),
            s(&[&me, "internal", "qbspatch", old, patch, out]),
        ),
        "bsdiff" => (
            "bsdiff 4.3 (Debian)",
            s(&["bsdiff", old, new, patch]),
            s(&["bspatch", old, out, patch]),
        ),
        "hdiffpatch" => (
            "hdiffpatch+zstd19",
            s(&["python3", &helper, "diff", old, new, patch]),
            s(&["python3", &helper, "apply", old, patch, out]),
        ),
        "hdiffpatch-lzma2" => (
            "hdiffpatch+lzma2-9",
            s(&["python3", &helper, "diff", old, new, patch, "lzma2"]),
            s(&["python3", &helper, "apply", old, patch, out, "lzma2"]),
        ),
        "xdelta3" => (
            "xdelta3 -9",
            s(&["xdelta3", "-e", "-9", "-f", "-s", old, new, patch]),
            s(&["xdelta3", "-d", "-f", "-s", old, patch, out]),
        ),
        "zstd" => (
            "zstd -19 --patch-from",
            s(&[
                "zstd",
                "-q",
                "-f",
                "-19",
                "--long=31",
                &format!("--patch-from={old}"),
                new,
                "-o",
                patch,
            ]),
            s(&[
                "zstd",
                "-q",
                "-f",
                "-d",
                "--long=31",
                &format!("--patch-from={old}"),
                patch,
                "-o",
                out,
            ]),
        ),
        other => bail!("unknown tool {other} (known: {ALL_TOOLS:?})"),
    })
}

fn sha256_file(path: &Path) -> Result<[u8; 32]> {
    let mut hasher = Sha256::new();
    let mut file = std::fs::File::open(path)?;
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hasher.finalize().into())
}

fn bench_pair(
    pair: &Path,
    tools: &[String],
    bin_dir: &Path,
    helper: &Path,
    repeat: usize,
) -> Result<Vec<Row>> {
    let scratch = tempfile::tempdir_in(pair.parent().unwrap_or(Path::new(".")))?;
    let old = pair.join("old").display().to_string();
    let new_path = pair.join("new");
    let new = new_path.display().to_string();
    let expected = sha256_file(&new_path)?;
    let signed = Signed {
        source_sha256: hex::encode(sha256_file(&pair.join("old"))?),
        target_len: std::fs::metadata(&new_path)?.len().to_string(),
        target_sha256: hex::encode(expected),
    };
    let mut rows = Vec::new();
    for tool in tools {
        let patch = scratch.path().join(format!("{tool}.patch"));
        let out = scratch.path().join(format!("{tool}.out"));
        let (name, diff_cmd, apply_cmd) = tool_commands(
            tool,
            &old,
            &new,
            &patch.display().to_string(),
            &out.display().to_string(),
            bin_dir,
            helper,
            &signed,
        )?;
        eprintln!("  {name}: diff");
        let diff = measure_best(&diff_cmd, scratch.path(), repeat)?;
        eprintln!("  {name}: apply");
        let apply = measure_best(&apply_cmd, scratch.path(), repeat)?;
        let identical = sha256_file(&out)? == expected;
        rows.push(Row {
            key: tool.clone(),
            tool: name,
            patch_len: std::fs::metadata(&patch)?.len(),
            diff,
            apply,
            identical,
        });
        std::fs::remove_file(&out)?;
    }
    Ok(rows)
}

fn run(args: &[String]) -> Result<()> {
    let mut corpus = None;
    let mut synthetic_mib = None;
    let mut repeat = 3usize;
    let mut only_half = None;
    let mut tools: Vec<String> = ALL_TOOLS.iter().map(|t| t.to_string()).collect();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--synthetic-mib" => {
                synthetic_mib = Some(it.next().context("--synthetic-mib N")?.parse::<usize>()?)
            }
            "--half" => {
                let text = it.next().context("--half tune|held-out")?;
                only_half = Some(
                    Half::parse(text)
                        .with_context(|| format!("--half tune|held-out, not {text}"))?,
                );
            }
            "--repeat" => repeat = it.next().context("--repeat N")?.parse::<usize>()?.max(1),
            "--tools" => {
                tools = it
                    .next()
                    .context("--tools a,b")?
                    .split(',')
                    .map(str::to_string)
                    .collect()
            }
            other if !other.starts_with("--") => corpus = Some(PathBuf::from(other)),
            other => bail!("unknown option {other}"),
        }
    }
    let corpus =
        corpus.context(
            "usage: delta-bench [--synthetic-mib N] [--tools a,b] [--repeat N] [--half tune|held-out] CORPUS_DIR",
        )?;
    if !tools.iter().any(|t| t == "ours") {
        tools.insert(0, "ours".into());
    }
    std::fs::create_dir_all(&corpus)?;
    if let Some(mib) = synthetic_mib {
        let dir = corpus.join(format!("synthetic-{mib}mib"));
        if !dir.join("new").exists() {
            eprintln!("generating {}", dir.display());
            std::fs::create_dir_all(&dir)?;
            let old = ota_tests::synthetic::image(2026, mib << 20);
            let new = ota_tests::synthetic::next_release(&old, 2027, 40 + mib);
            std::fs::write(dir.join("old"), &old)?;
            std::fs::write(dir.join("new"), &new)?;
        }
    }
    let bin_dir = std::env::current_exe()?
        .parent()
        .context("binary directory")?
        .to_path_buf();
    for bin in ["ota-server", "ota-agent"] {
        if !bin_dir.join(bin).exists() {
            bail!("{bin} not found next to delta-bench: cargo build --release -p ota-server -p ota-agent -p ota-tests");
        }
    }
    let helper = tempfile::Builder::new().suffix(".py").tempfile()?;
    std::fs::write(helper.path(), HDIFFPATCH_TOOL)?;

    let manifest = corpus.join("MANIFEST");
    let labels = if manifest.is_file() {
        delta_report::parse_manifest(&std::fs::read_to_string(&manifest)?)
            .with_context(|| format!("reading {}", manifest.display()))?
    } else {
        BTreeMap::new()
    };
    let mut pairs: Vec<PathBuf> = std::fs::read_dir(&corpus)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("old").is_file() && p.join("new").is_file())
        .filter(|p| {
            only_half.is_none_or(|half| {
                labels
                    .get(
                        &p.file_name()
                            .unwrap_or_default()
                            .to_string_lossy()
                            .into_owned(),
                    )
                    .is_some_and(|label| label.half == half)
            })
        })
        .collect();
    pairs.sort();
    if pairs.is_empty() {
        bail!(
            "no old/new pairs under {}{} (fetch: bash ../shared/delta-corpus/fetch.sh {0} or bash tests/delta-corpus/fetch.sh {0})",
            corpus.display(),
            only_half.map_or(String::new(), |h| format!(" in half {h}"))
        );
    }

    let mut report = String::new();
    let mut results: BTreeMap<String, (u64, Vec<Row>)> = BTreeMap::new();
    for pair in &pairs {
        let name = pair
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        eprintln!("pair {name}");
        let new_len = std::fs::metadata(pair.join("new"))?.len();
        let rows = bench_pair(pair, &tools, &bin_dir, helper.path(), repeat)?;
        let sizes: Vec<String> = rows
            .iter()
            .map(|r| format!("{} {}", r.key, r.patch_len))
            .collect();
        eprintln!("  sizes: {}", sizes.join(", "));
        results.insert(name, (new_len, rows));
    }

    writeln!(
        report,
        "delta-bench on {} ({} pairs), {} cores",
        corpus.display(),
        pairs.len(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    )?;
    let width = results.keys().map(String::len).max().unwrap_or(0).max(20);
    writeln!(
        report,
        "{:<width$} {:<22} {:>11} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>4}",
        "pair",
        "tool",
        "patch B",
        "%new",
        "×best",
        "diff s",
        "apply s",
        "diffRSS",
        "applyRSS",
        "ok"
    )?;
    let mut goals_size = Vec::new();
    let mut goals_time = Vec::new();
    let mut goals_rss = Vec::new();
    let mut all_identical = true;
    let mut geo: BTreeMap<&'static str, (f64, usize)> = BTreeMap::new();
    for (name, (new_len, rows)) in &results {
        let best = rows
            .iter()
            .filter(|r| r.tool != OURS)
            .min_by_key(|r| r.patch_len);
        let best_len = best.map_or(u64::MAX, |r| r.patch_len);
        let bsdiff_len = rows
            .iter()
            .find(|r| r.tool.starts_with("bsdiff"))
            .map(|r| r.patch_len);
        for row in rows {
            all_identical &= row.identical;
            writeln!(
                report,
                "{:<width$} {:<22} {:>11} {:>7.2}% {:>8.3} {:>8.2} {:>8.2} {:>7.0}Mi {:>7.1}Mi {:>4}",
                name,
                row.tool,
                row.patch_len,
                row.patch_len as f64 * 100.0 / (*new_len).max(1) as f64,
                row.patch_len as f64 / best_len as f64,
                row.diff.seconds,
                row.apply.seconds,
                row.diff.rss_mib,
                row.apply.rss_mib,
                if row.identical { "yes" } else { "NO" }
            )?;
            if let Some(b) = bsdiff_len {
                let entry = geo.entry(row.tool).or_insert((0.0, 0));
                entry.0 += (row.patch_len as f64 / b as f64).ln();
                entry.1 += 1;
            }
        }
        let ours = rows.iter().find(|r| r.tool == OURS).context("our row")?;
        if let Some(best) = best {
            goals_size.push((
                name.clone(),
                ours.patch_len as f64 / best.patch_len as f64,
                best.tool,
            ));
        }
        if let Some(q) = rows.iter().find(|r| r.tool.starts_with("qbsdiff")) {
            goals_time.push((name.clone(), ours.diff.seconds, q.diff.seconds));
        }
        goals_rss.push((name.clone(), ours.apply.rss_mib, ours.diff.rss_mib));
    }
    writeln!(report)?;
    let geo_line: Vec<String> = geo
        .iter()
        .map(|(tool, (sum, n))| format!("{tool} {:.3}", (sum / *n as f64).exp()))
        .collect();
    writeln!(
        report,
        "patch size, geomean vs Debian bsdiff: {}",
        geo_line.join(", ")
    )?;

    let size_met = goals_size.iter().all(|(_, r, _)| *r <= 1.0);
    let size_within = goals_size.iter().all(|(_, r, _)| *r <= 1.01);
    let detail: Vec<String> = goals_size
        .iter()
        .map(|(p, r, t)| format!("{p} {:+.1}% vs {t}", (r - 1.0) * 100.0))
        .collect();
    writeln!(
        report,
        "goals: patch size <= best competitor on every pair: {} ({})",
        if size_met {
            "met"
        } else if size_within {
            "met within 1%"
        } else {
            "NOT met"
        },
        detail.join("; ")
    )?;
    let time_met = goals_time.iter().all(|(_, ours, q)| ours <= q);
    let detail: Vec<String> = goals_time
        .iter()
        .map(|(p, o, q)| format!("{p} {o:.2}s vs {q:.2}s"))
        .collect();
    writeln!(
        report,
        "goals: diff time <= qbsdiff on every pair: {} ({})",
        if goals_time.is_empty() {
            "not measured"
        } else if time_met {
            "met"
        } else {
            "NOT met"
        },
        detail.join("; ")
    )?;
    let rss_met = goals_rss
        .iter()
        .all(|(_, apply, _)| *apply <= APPLY_RSS_GOAL_MIB);
    let detail: Vec<String> = goals_rss
        .iter()
        .map(|(p, a, _)| format!("{p} {a:.1} MiB"))
        .collect();
    writeln!(
        report,
        "goals: apply peak RSS <= {APPLY_RSS_GOAL_MIB} MiB: {} ({})",
        if rss_met { "met" } else { "NOT met" },
        detail.join("; ")
    )?;
    let detail: Vec<String> = goals_rss
        .iter()
        .map(|(p, _, d)| {
            let new_len = results.get(p).map_or(1, |(n, _)| *n);
            format!(
                "{p} {d:.0} MiB = {:.1}× new",
                d * 1048576.0 / new_len as f64
            )
        })
        .collect();
    writeln!(report, "goals: diff peak RSS bounded by the window cap (default 256 MiB: ≤ ≈ 7 × 256 MiB whatever the image size): measured {}", detail.join("; "))?;
    writeln!(
        report,
        "goals: every output byte-identical: {}",
        if all_identical { "met" } else { "NOT met" }
    )?;
    if !labels.is_empty() {
        family_report(&mut report, &results, &labels, &tools)?;
    }
    print!("{report}");
    if !all_identical {
        bail!("some tool produced a wrong image");
    }
    Ok(())
}

/// The per-family report of a labelled corpus (issue 13), each half on its own: geometric
/// mean of the patch size of every tool per family, then our size over the best other
/// tool's on every pair, and the pairs we lose on.
fn family_report(
    report: &mut String,
    results: &BTreeMap<String, (u64, Vec<Row>)>,
    labels: &BTreeMap<String, PairLabel>,
    tools: &[String],
) -> Result<()> {
    for half in Half::ALL {
        // family -> pairs of this half, in name order.
        let mut families: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (pair, label) in labels {
            if label.half == half && results.contains_key(pair) {
                families.entry(&label.family).or_default().push(pair);
            }
        }
        writeln!(report)?;
        if families.is_empty() {
            writeln!(report, "half {half}: no pair benched")?;
            continue;
        }
        let pair_count: usize = families.values().map(Vec::len).sum();
        writeln!(
            report,
            "half {half} ({pair_count} pairs): geometric mean of patch bytes per family; ours/best = our patch over the smallest other tool's"
        )?;
        let mut header = format!("{:<22} {:>5}", "family", "pairs");
        for tool in tools {
            write!(header, " {:>11}", tool)?;
        }
        write!(header, " {:>9} {:>9}", "ours/best", "max")?;
        writeln!(report, "{header}")?;
        let mut all_pairs: Vec<&str> = Vec::new();
        for (family, pairs) in &families {
            write_family_line(report, family, pairs, results, tools)?;
            all_pairs.extend(pairs);
        }
        write_family_line(report, "all", &all_pairs, results, tools)?;
        writeln!(report, "half {half}, every pair:")?;
        let width = all_pairs.iter().map(|p| p.len()).max().unwrap_or(0).max(20);
        let mut losses = Vec::new();
        for (family, pairs) in &families {
            for pair in pairs {
                let Some((ratio, best, ours_len, best_len)) = pair_ratio(&results[*pair].1) else {
                    continue;
                };
                let best_shown = format!("({best})");
                writeln!(
                    report,
                    "  {pair:<width$} {family:<22} ours {ours_len:>10} B  best other {best_len:>10} B {best_shown:<23}  ours/best {ratio:.3}"
                )?;
                if ratio > 1.0 {
                    losses.push(format!("{pair} {:+.1}% vs {best}", (ratio - 1.0) * 100.0));
                }
            }
        }
        writeln!(
            report,
            "half {half}, pairs we lose on: {}",
            if losses.is_empty() {
                "none".to_string()
            } else {
                losses.join("; ")
            }
        )?;
    }
    Ok(())
}

/// Our patch over the best other tool's on one pair: (ratio, best tool, ours, best).
fn pair_ratio(rows: &[Row]) -> Option<(f64, &'static str, u64, u64)> {
    let sizes: Vec<(&'static str, u64)> = rows.iter().map(|r| (r.tool, r.patch_len)).collect();
    let (ratio, best) = delta_report::best_other_ratio(OURS, &sizes)?;
    let ours = rows.iter().find(|r| r.tool == OURS)?.patch_len;
    let best_len = rows.iter().find(|r| r.tool == best)?.patch_len;
    Some((ratio, best, ours, best_len))
}

fn write_family_line(
    report: &mut String,
    family: &str,
    pairs: &[&str],
    results: &BTreeMap<String, (u64, Vec<Row>)>,
    tools: &[String],
) -> Result<()> {
    let mut line = format!("{family:<22} {:>5}", pairs.len());
    for tool in tools {
        let sizes: Vec<f64> = pairs
            .iter()
            .filter_map(|p| results[*p].1.iter().find(|r| &r.key == tool))
            .map(|r| r.patch_len as f64)
            .collect();
        match delta_report::geomean(&sizes) {
            Some(g) if sizes.len() == pairs.len() => write!(line, " {:>11.0}", g)?,
            _ => write!(line, " {:>11}", "-")?,
        }
    }
    let ratios: Vec<f64> = pairs
        .iter()
        .filter_map(|p| pair_ratio(&results[*p].1).map(|(r, ..)| r))
        .collect();
    match delta_report::ratio_summary(&ratios) {
        Some((max, geo)) => write!(line, " {geo:>9.3} {max:>9.3}")?,
        None => write!(line, " {:>9} {:>9}", "-", "-")?,
    }
    writeln!(report, "{line}")?;
    Ok(())
}
