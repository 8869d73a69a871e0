//! Writes the conformance vectors (PROTOCOL.md §11) to the directory given (default
//! `tests/vectors`), replacing what is there.

fn main() -> anyhow::Result<()> {
    let dir = std::path::PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "tests/vectors".to_owned()),
    );
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    for (path, bytes) in ota_tests::vectors::generate() {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().expect("a file in a case directory"))?;
        std::fs::write(&path, bytes)?;
    }
    println!("wrote {}", dir.display());
    Ok(())
}
