//! Embeds every file under `public/` into the binary, so the binary alone serves the test pages
//! and (when `scripts/vendor-docs.sh` has fetched them) the Swagger UI and ReDoc assets.
//! Generates `$OUT_DIR/public_files.rs`: `PUBLIC_FILES: &[(&str, &[u8])]`, sorted by path.

use std::path::{Path, PathBuf};
use std::{env, fs};

fn walk(dir: &Path, root: &Path, out: &mut Vec<(String, PathBuf)>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        if path.is_dir() {
            walk(&path, root, out);
        } else if path.is_file() {
            let rel = path.strip_prefix(root).expect("under root").to_string_lossy().replace('\\', "/");
            out.push((rel, path.canonicalize().expect("canonical path")));
        }
    }
}

fn main() {
    let root = Path::new("public");
    println!("cargo:rerun-if-changed=public");
    let mut files = Vec::new();
    walk(root, root, &mut files);
    files.sort();
    let mut code = String::from("/// Files embedded from `public/` at build time: (path relative to public/, bytes).\npub static PUBLIC_FILES: &[(&str, &[u8])] = &[\n");
    for (rel, abs) in &files {
        code.push_str(&format!("    ({rel:?}, include_bytes!({:?})),\n", abs.display().to_string()));
    }
    code.push_str("];\n");
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR")).join("public_files.rs");
    fs::write(out, code).expect("write public_files.rs");
}
