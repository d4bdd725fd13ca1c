//! Checks over the source text of `coordinator/src` that keep its
//! dependencies pointing one way.

use std::path::{Path, PathBuf};

/// Files that still name the MCO backend outside `mco/` and the wiring:
/// each holds a static table (RBAC rules, required kinds, metric label
/// values, the extension the agents expect) that the generators and the
/// tests read without a backend instance.
const MCO_ALLOWED: [&str; 4] = [
    "rbac.rs",
    "prerequisites.rs",
    "metrics.rs",
    "health/server.rs",
];

fn source_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            source_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Each file's path under `src/` and its text.
fn sources() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    source_files(&root, &mut files);
    files
        .into_iter()
        .map(|path| {
            let relative = path
                .strip_prefix(&root)
                .unwrap_or(&path)
                .to_string_lossy()
                .replace('\\', "/");
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            (relative, text)
        })
        .collect()
}

/// The lines of `text` with comments removed (`//` to the end of a line,
/// `/* */` blocks). A `//` inside a string literal cuts the line short,
/// which can only hide code, never invent it.
fn code_lines(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut in_block = false;
    for line in text.lines() {
        let mut code = String::new();
        let mut rest = line;
        loop {
            if in_block {
                match rest.find("*/") {
                    Some(end) => {
                        in_block = false;
                        rest = &rest[end + 2..];
                    }
                    None => break,
                }
            } else {
                let line_comment = rest.find("//");
                let block = rest.find("/*");
                match (line_comment, block) {
                    (Some(l), Some(b)) if b < l => {
                        code.push_str(&rest[..b]);
                        in_block = true;
                        rest = &rest[b + 2..];
                    }
                    (Some(l), _) => {
                        code.push_str(&rest[..l]);
                        break;
                    }
                    (None, Some(b)) => {
                        code.push_str(&rest[..b]);
                        in_block = true;
                        rest = &rest[b + 2..];
                    }
                    (None, None) => {
                        code.push_str(rest);
                        break;
                    }
                }
            }
        }
        lines.push(code);
    }
    lines
}

/// The lines of `text` outside `mco/` that name the MCO backend.
fn mco_uses(text: &str) -> Vec<String> {
    code_lines(text)
        .into_iter()
        .filter(|line| line.contains("mco::"))
        .collect()
}

#[test]
fn only_the_mco_backend_and_the_wiring_name_the_mco() {
    let mut offending = Vec::new();
    for (path, text) in sources() {
        if path.starts_with("mco/") || path == "app.rs" || MCO_ALLOWED.contains(&path.as_str()) {
            continue;
        }
        for line in mco_uses(&text) {
            offending.push(format!("{path}: {}", line.trim()));
        }
    }
    assert!(
        offending.is_empty(),
        "the MCO is named outside mco/ and app.rs:\n{}",
        offending.join("\n")
    );
}

#[test]
fn comments_do_not_count_as_uses() {
    // Spelled with a placeholder, so this file names no backend itself.
    let named = |s: &str| s.replace("BACKEND", "mco");
    let text = named(
        "// BACKEND::names in a comment\nlet a = 1; /* BACKEND::x */ let b = crate::BACKEND::names::POOL;\n/* BACKEND::\n BACKEND:: */ let c = 2;",
    );
    assert_eq!(
        mco_uses(&text),
        [named("let a = 1;  let b = crate::BACKEND::names::POOL;")]
    );
}
