//! Embeds every file under `public/` into the binary, so the binary alone serves the test pages
//! and the Swagger UI and ReDoc assets (vendored in `public/vendor/`, part of the repository;
//! `scripts/vendor-docs.sh` checks and refreshes them). Generates `$OUT_DIR/public_files.rs`:
//! `PUBLIC_FILES: &[(&str, &[u8])]`, sorted by path. Dotfiles are not embedded.
//!
//! Must never: build a binary whose /docs or /redoc would need the internet — a missing docs
//! asset stops the build with a message saying how to get it back.

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

/// The docs assets `src/api/docs.rs` refers to; the build stops without them.
const REQUIRED: &[&str] = &[
    "vendor/swagger-ui/swagger-ui-bundle.js",
    "vendor/swagger-ui/swagger-ui.css",
    "vendor/swagger-ui/favicon-32x32.png",
    "vendor/redoc/redoc.standalone.js",
];

fn main() {
    let root = Path::new("public");
    println!("cargo:rerun-if-changed=public");
    let mut files = Vec::new();
    walk(root, root, &mut files);
    files.sort();
    for required in REQUIRED {
        if !files.iter().any(|(rel, _)| rel == required) {
            panic!(
                "public/{required} is missing: the API docs pages need it and there is no CDN fallback. \
                 It is part of the repository: restore it with `git checkout -- public/vendor` \
                 (or refresh every docs asset with `scripts/vendor-docs.sh --update`)."
            );
        }
    }
    let mut code = String::from("/// Files embedded from `public/` at build time: (path relative to public/, bytes).\npub static PUBLIC_FILES: &[(&str, &[u8])] = &[\n");
    for (rel, abs) in &files {
        code.push_str(&format!("    ({rel:?}, include_bytes!({:?})),\n", abs.display().to_string()));
    }
    code.push_str("];\n");
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR")).join("public_files.rs");
    fs::write(out, code).expect("write public_files.rs");
}
