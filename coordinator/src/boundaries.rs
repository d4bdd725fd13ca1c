//! Checks over the source text of `coordinator/src` that keep its
//! dependencies pointing one way.

use std::path::{Path, PathBuf};

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
        if path.starts_with("mco/") || path == "app.rs" {
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

/// The module a file under `src/` is: `plan/mod.rs` is `plan`,
/// `health/marks.rs` is `health::marks`.
fn module_of(path: &str) -> String {
    let path = path.trim_end_matches(".rs");
    let path = path.trim_end_matches("/mod");
    match path {
        "lib" | "main" => String::new(),
        _ => path.replace('/', "::"),
    }
}

/// The production code of a file: its unit tests (`#[cfg(test)] mod
/// tests { ... }`, always last) cut off.
fn production_text(text: &str) -> &str {
    text.find("#[cfg(test)]\nmod tests {")
        .map_or(text, |at| &text[..at])
}

fn is_path_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == ':'
}

/// The paths `rest` starts with: `a::b::C`, or for a group
/// `a::{b, c::{d, E}}` each path in it (`a::b`, `a::c::d`, `a::c::E`).
fn paths_at(rest: &str) -> Vec<String> {
    let head: String = rest.chars().take_while(|c| is_path_char(*c)).collect();
    let after = rest[head.len()..].trim_start();
    let group = head.is_empty() || head.ends_with("::");
    if !group || !after.starts_with('{') {
        return vec![head.trim_end_matches(':').to_owned()];
    }
    let mut depth = 0;
    let mut items = Vec::new();
    let mut start = 1;
    for (at, c) in after.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 1 => {
                items.push(&after[start..at]);
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 1 => {
                items.push(&after[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    items
        .into_iter()
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .flat_map(|item| {
            paths_at(item)
                .into_iter()
                .map(|tail| format!("{head}{tail}"))
        })
        .collect()
}

/// The modules `module`'s code names through `crate::` or `super::`
/// paths (groups included), resolved to the longest path that is a module.
fn imports(module: &str, text: &str, modules: &[String]) -> Vec<String> {
    let parent = module.rsplit_once("::").map_or("", |(p, _)| p);
    let code = code_lines(production_text(text)).join("\n");
    let mut found = Vec::new();
    for (prefix, base) in [("crate::", ""), ("super::", parent)] {
        for (at, _) in code.match_indices(prefix) {
            // Part of a longer path (`kube::runtime::...`) is not ours.
            if code[..at].ends_with(is_path_char) {
                continue;
            }
            for path in paths_at(&code[at + prefix.len()..]) {
                let segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
                let target = (1..=segments.len()).rev().find_map(|len| {
                    let joined = segments[..len].join("::");
                    let candidate = if base.is_empty() {
                        joined
                    } else {
                        format!("{base}::{joined}")
                    };
                    modules.contains(&candidate).then_some(candidate)
                });
                found.extend(target);
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

#[test]
fn groups_of_imports_are_read_whole() {
    assert_eq!(
        paths_at("a::{b, c::{d, E}, f as g};"),
        ["a::b", "a::c::d", "a::c::E", "a::f"]
    );
    assert_eq!(paths_at("kind::NODE.api_version()"), ["kind::NODE"]);
    assert_eq!(paths_at("{names, status};"), ["names", "status"]);
}

/// Whether one module is the other or contains it: a module and its
/// submodules share their parent's types both ways by design.
fn related(a: &str, b: &str) -> bool {
    let inside = |inner: &str, outer: &str| {
        outer.is_empty() || inner == outer || inner.starts_with(&format!("{outer}::"))
    };
    inside(a, b) || inside(b, a)
}

/// Every import edge between production modules, `(from, to)`.
pub(crate) fn import_graph() -> Vec<(String, String)> {
    let sources = sources();
    let modules: Vec<String> = sources.iter().map(|(p, _)| module_of(p)).collect();
    let mut edges = Vec::new();
    for (path, text) in &sources {
        if path == "boundaries.rs" || path.ends_with("_tests.rs") || path.ends_with("fixtures.rs") {
            continue;
        }
        let from = module_of(path);
        for to in imports(&from, text, &modules) {
            if !related(&from, &to) {
                edges.push((from.clone(), to));
            }
        }
    }
    edges
}

/// A circle of imports, if there is one.
fn find_circle(edges: &[(String, String)]) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &[(String, String)],
        path: &mut Vec<String>,
        done: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|p| p == node) {
            let mut circle = path[start..].to_vec();
            circle.push(node.to_owned());
            return Some(circle);
        }
        if done.iter().any(|d| d == node) {
            return None;
        }
        path.push(node.to_owned());
        for (_, to) in edges.iter().filter(|(from, _)| from == node) {
            if let Some(circle) = visit(to, edges, path, done) {
                return Some(circle);
            }
        }
        path.pop();
        done.push(node.to_owned());
        None
    }
    let mut done = Vec::new();
    edges
        .iter()
        .find_map(|(from, _)| visit(from, edges, &mut Vec::new(), &mut done))
}

#[test]
fn production_modules_import_each_other_without_circles() {
    let edges = import_graph();
    assert!(
        edges
            .iter()
            .any(|(from, to)| from == "controller" && to == "applier"),
        "the graph misses a known import: {edges:?}"
    );
    if let Some(circle) = find_circle(&edges) {
        panic!("import circle: {}", circle.join(" → "));
    }
}

#[test]
fn a_circle_is_found() {
    let edge = |a: &str, b: &str| (a.to_owned(), b.to_owned());
    let edges = [
        edge("a", "b"),
        edge("b", "c"),
        edge("c", "a"),
        edge("c", "d"),
    ];
    assert_eq!(
        find_circle(&edges),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    assert_eq!(find_circle(&edges[1..]), None);
}
