//! Lists the workflow files to compile into the binary and writes an `include_str!` table.
//!
//! The folder is `agent/embedded/`, or `REACTOR_EMBED_DIR` when set at build time. This script
//! only lists files; it never validates or runs anything (the agent validates them at start,
//! and a unit test checks the shipped ones).

use std::path::PathBuf;

fn main() {
    println!("cargo::rerun-if-env-changed=REACTOR_EMBED_DIR");
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let dir = match std::env::var_os("REACTOR_EMBED_DIR") {
        Some(dir) => manifest.join(PathBuf::from(dir)),
        None => manifest.join("embedded"),
    };
    println!("cargo::rerun-if-changed={}", dir.display());
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    let mut table = String::from("&[\n");
    for file in &files {
        println!("cargo::rerun-if-changed={}", file.display());
        let name = file.file_name().expect("a file").to_string_lossy();
        table.push_str(&format!(
            "    ({name:?}, include_str!({path:?})),\n",
            path = file.display().to_string()
        ));
    }
    table.push(']');
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo")).join("embedded.rs");
    std::fs::write(out, table).expect("write OUT_DIR/embedded.rs");
}
