//! `ota-server delta ...` subcommands.

use super::builder::{
    build_delta_file, BuildOptions, DEFAULT_WINDOW_CAP, LEVELS, MAX_THREADS, WINDOW_MIB,
};
use anyhow::Context;
use clap::Subcommand;

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
        } => {
            let mut options = BuildOptions {
                window_cap: window_mib << 20,
                level,
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
            println!(
                "{}: {} bytes ({} → {} bytes, delta {} bytes, {} part(s), {} segment(s))",
                report.algorithm.name(),
                report.container_len,
                report.source_len,
                report.target_len,
                report.delta_container_len,
                report.parts,
                report.segments
            );
            Ok(())
        }
    }
}
