//! `ota-server delta ...` subcommands.

use super::builder::{
    build_delta_file, BuildOptions, ScanChoice, TransformChoice, DEFAULT_MIN_SAVING_PERCENT,
    DEFAULT_WINDOW_CAP, LEVELS, MAX_THREADS, MIN_SAVING_PERCENT, WINDOW_MIB,
};
use anyhow::Context;
use clap::Subcommand;
use ota_core::delta::Transform;

/// `--transform` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TransformArg {
    /// Try the ARM64 transform when the new image holds ARM64 code, and delta-code the
    /// ELF unwind table when the new image has one (with ARM64 code: with and without the
    /// ARM64 transform); keep the smallest delta.
    Auto,
    /// Plain deltas only.
    Off,
    /// Try the x86-64 transform, keep the smaller delta.
    #[value(name = "x86-64")]
    X86_64,
    /// Try the ARM64 transform, keep the smaller delta.
    Arm64,
    /// Try the ELF unwind table delta-coded, keep the smaller delta.
    EhTable,
    /// Try the x86-64 transform with the unwind table, keep the smaller delta.
    #[value(name = "x86-64+eh-table")]
    X86_64EhTable,
    /// Try the ARM64 transform with the unwind table, keep the smaller delta.
    #[value(name = "arm64+eh-table")]
    Arm64EhTable,
}

impl From<TransformArg> for TransformChoice {
    fn from(arg: TransformArg) -> Self {
        match arg {
            TransformArg::Auto => TransformChoice::Auto,
            TransformArg::Off => TransformChoice::Off,
            TransformArg::X86_64 => TransformChoice::Try(Transform::X86_64),
            TransformArg::Arm64 => TransformChoice::Try(Transform::Arm64),
            TransformArg::EhTable => TransformChoice::Try(Transform::EhTable),
            TransformArg::X86_64EhTable => TransformChoice::Try(Transform::X86_64EhTable),
            TransformArg::Arm64EhTable => TransformChoice::Try(Transform::Arm64EhTable),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum DeltaCommand {
    /// Build a delta from an old and a new full image.
    Build {
        #[arg(long)]
        old: std::path::PathBuf,
        #[arg(long)]
        new: std::path::PathBuf,
        #[arg(long)]
        out: std::path::PathBuf,
        /// Most MiB of old window / new part in memory at once (peak memory ≈ 7×), 1–4096.
        #[arg(long, default_value_t = DEFAULT_WINDOW_CAP >> 20,
              value_parser = clap::value_parser!(u64).range(*WINDOW_MIB.start()..=*WINDOW_MIB.end()))]
        window_mib: u64,
        /// Worker threads, 1–1024 (default: all cores).
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=MAX_THREADS as i64))]
        threads: Option<u16>,
        /// zstd level of the delta streams (1–22).
        #[arg(long, default_value_t = BuildOptions::default().level,
              value_parser = clap::value_parser!(i32).range(*LEVELS.start() as i64..=*LEVELS.end() as i64))]
        level: i32,
        /// Executable-aware transforms to try besides the plain delta.
        #[arg(long, value_enum, default_value_t = TransformArg::Auto)]
        transform: TransformArg,
        /// Ship the full image unless the delta is at least this many percent smaller
        /// than the full image compressed (0–90).
        #[arg(long, default_value_t = DEFAULT_MIN_SAVING_PERCENT,
              value_parser = clap::value_parser!(u8).range(*MIN_SAVING_PERCENT.start() as i64..=*MIN_SAVING_PERCENT.end() as i64))]
        min_saving_percent: u8,
        /// zstd streams only (container algorithm 1 or 3), for agents that predate
        /// algorithm 4 (LZMA2 diff and extra streams).
        #[arg(long)]
        no_lzma: bool,
        /// Segments only, never one stream (container algorithm 5), for agents that
        /// predate algorithm 5 (implied by `--no-lzma`).
        #[arg(long)]
        no_one_stream: bool,
        /// With `--transform auto`, never delta-code the ELF unwind table (transform ids
        /// 3-5), for agents that predate them (a `--transform` naming one still does).
        #[arg(long)]
        no_eh_table: bool,
        /// Leave the source and target SHA-256 out of the container (format version 2,
        /// 64 bytes smaller), for delivery with signed metadata that carries them (the
        /// server does this by default). `ota-agent delta apply` then needs
        /// --source-sha256, --expect-length and --expect-sha256; they are printed here.
        #[arg(long)]
        detached_digests: bool,
        /// Match-scan profile(s) to try: `auto` builds with each and keeps the smaller
        /// delta; `eager` or `steady` builds once, faster.
        #[arg(long, value_enum, default_value_t = ScanChoice::Auto)]
        scan: ScanChoice,
    },
}

pub fn run(cmd: DeltaCommand) -> anyhow::Result<()> {
    match cmd {
        DeltaCommand::Build {
            old,
            new,
            out,
            window_mib,
            threads,
            level,
            transform,
            min_saving_percent,
            no_lzma,
            no_one_stream,
            no_eh_table,
            detached_digests,
            scan,
        } => {
            let mut options = BuildOptions {
                window_cap: window_mib << 20,
                level,
                transform: transform.into(),
                min_saving_percent,
                lzma: !no_lzma,
                scan: scan.profile(),
                one_stream: !no_one_stream,
                eh_table: !no_eh_table,
                detached_digests,
                ..BuildOptions::default()
            };
            if let Some(threads) = threads {
                options.threads = usize::from(threads);
            }
            let report = build_delta_file(&old, &new, &out, &options).with_context(|| {
                format!(
                    "building a delta from {} to {}",
                    old.display(),
                    new.display()
                )
            })?;
            let tried = match report.transformed {
                Some((transform, len)) => {
                    format!(", {} transform {len} bytes compared", transform.name())
                }
                None => String::new(),
            };
            let compared = report
                .candidates
                .iter()
                .map(|c| {
                    let t = c.transform.map_or("plain", |t| t.name());
                    let coded = c
                        .coded_len
                        .map_or(String::new(), |len| format!(" (coded {len})"));
                    format!("{t}/{} {}{coded}", c.scan.name(), c.delta_len)
                })
                .collect::<Vec<_>>()
                .join(", ");
            let compared = match compared.is_empty() {
                true => String::new(),
                false => format!(
                    ", compared with zstd streams only at level {}: {compared}",
                    options.compare_level()
                ),
            };
            let plain_compared = match report.candidates.is_empty() {
                true => "",
                false => " compared",
            };
            println!(
                "{}: {} bytes ({} → {} bytes, delta {} bytes, {} scan, plain delta {} bytes{plain_compared}{tried}{compared}, {} part(s), {} segment(s))",
                report.algorithm.name(),
                report.container_len,
                report.source_len,
                report.target_len,
                report.delta_container_len,
                report.scan.name(),
                report.plain_delta_len,
                report.parts,
                report.segments
            );
            if options.detached_digests {
                println!(
                    "detached digests (give them to `ota-agent delta apply`): --source-sha256 {} --expect-length {} --expect-sha256 {}",
                    hex::encode(report.digests.source),
                    report.target_len,
                    hex::encode(report.digests.target)
                );
            }
            Ok(())
        }
    }
}
