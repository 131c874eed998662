//! Files a reader can hold in their head: no Rust source file over 500 lines, and no function over
//! 60 lines (signature to closing brace) except the few listed in [`LONG_FUNCTIONS_ALLOWED`], each
//! with the reason it reads better whole. Reads the sources; no build needed.
//!
//! A function is found by its `fn` line and ends at the first later line that is its own indent
//! followed by `}`, which is how rustfmt (checked in CI) lays every function out.

use std::path::{Path, PathBuf};

const ROOTS: &[&str] = &["engine", "runtime", "coordinator", "worker", "embedded", "glctl", "loadtest", "tests"];
const MAX_FILE_LINES: usize = 500;
const MAX_FUNCTION_LINES: usize = 60;

/// Functions allowed to be longer, by file and name, with the reason. Only declarative tables and
/// SQL-heavy store code qualify: splitting them would scatter one statement or one table.
const LONG_FUNCTIONS_ALLOWED: &[(&str, &str, &str)] = &[
    ("coordinator/src/metrics.rs", "new", "declarative table: one registration per metric"),
    ("engine/src/config.rs", "from_values", "declarative table: one parse per setting"),
    ("tests/tests/suite/bad_input.rs", "cases", "declarative table: one bad request per row"),
    ("coordinator/src/store/postgres/leases.rs", "commit_step", "SQL-heavy store code: one transaction"),
    ("coordinator/src/store/postgres/leases.rs", "claim", "SQL-heavy store code: one transaction"),
    ("coordinator/src/store/postgres/executions.rs", "create_execution", "SQL-heavy store code: one transaction"),
    ("coordinator/src/store/sqlite/executions.rs", "create_execution", "SQL-heavy store code: one transaction"),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "target" && n != "node_modules") {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn all_sources() -> Vec<(String, String)> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root");
    let mut files = Vec::new();
    for root in ROOTS {
        rust_files(&workspace.join(root), &mut files);
    }
    assert!(files.len() > 100, "found only {} Rust files; is the walk wrong?", files.len());
    files
        .into_iter()
        .map(|p| {
            let relative = p.strip_prefix(workspace).expect("inside workspace").display().to_string();
            (relative, std::fs::read_to_string(&p).expect("source"))
        })
        .collect()
}

/// The name of the function a line declares, if it declares one.
fn declared_fn(line: &str) -> Option<&str> {
    let mut rest = line.trim_start();
    for qualifier in ["pub(crate) ", "pub(super) ", "pub ", "const ", "async ", "unsafe ", "extern \"C\" "] {
        rest = rest.strip_prefix(qualifier).unwrap_or(rest);
    }
    let rest = rest.strip_prefix("async ").unwrap_or(rest).strip_prefix("fn ")?;
    let end = rest.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(rest.len());
    Some(&rest[..end]).filter(|name| !name.is_empty())
}

/// Every function with a body: (name, first line number, length in lines).
fn functions(source: &str) -> Vec<(String, usize, usize)> {
    let lines: Vec<&str> = source.lines().collect();
    let mut found = Vec::new();
    for (start, line) in lines.iter().enumerate() {
        let Some(name) = declared_fn(line) else { continue };
        let indent = &line[..line.len() - line.trim_start().len()];
        // The signature ends at the first line ending in `{` (a body) or `;` (a declaration).
        let Some(open) = (start..lines.len()).find(|&i| {
            let l = lines[i].trim_end();
            l.ends_with('{') || l.ends_with(';') || l.ends_with('}')
        }) else {
            continue;
        };
        if !lines[open].trim_end().ends_with('{') {
            continue; // a declaration, or a body on the signature's own line
        }
        let close = format!("{indent}}}");
        let end = (open + 1..lines.len()).find(|&i| lines[i].trim_end() == close);
        let end = end.unwrap_or_else(|| panic!("no closing `{close}` for fn {name} at line {}", start + 1));
        found.push((name.to_owned(), start + 1, end - start + 1));
    }
    found
}

#[test]
fn the_function_finder_measures_what_rustfmt_lays_out() {
    let source = "fn one() -> u32 { 1 }\n\
                  pub(crate) async fn two(\n    a: u32,\n) -> u32 {\n    a\n}\n\
                  trait T {\n    fn declared(&self);\n    fn provided(&self) {\n        let _ = 1;\n    }\n}\n";
    assert_eq!(functions(source), vec![("two".into(), 2, 5), ("provided".into(), 9, 3)]);
}

#[test]
fn no_source_file_is_over_500_lines() {
    let long: Vec<String> = all_sources()
        .into_iter()
        .map(|(path, source)| (path, source.lines().count()))
        .filter(|(_, lines)| *lines > MAX_FILE_LINES)
        .map(|(path, lines)| format!("{path}: {lines} lines"))
        .collect();
    assert!(long.is_empty(), "files over {MAX_FILE_LINES} lines; split them by what they do:\n{}", long.join("\n"));
}

#[test]
fn no_function_is_over_60_lines_outside_the_allowed_list() {
    let mut long = Vec::new();
    let mut allowed_seen = Vec::new();
    for (path, source) in all_sources() {
        for (name, line, length) in functions(&source) {
            if length <= MAX_FUNCTION_LINES {
                continue;
            }
            if LONG_FUNCTIONS_ALLOWED.iter().any(|(p, n, _)| *p == path && *n == name) {
                allowed_seen.push((path.clone(), name));
            } else {
                long.push(format!("{path}:{line} fn {name}: {length} lines"));
            }
        }
    }
    assert!(long.is_empty(), "functions over {MAX_FUNCTION_LINES} lines:\n{}", long.join("\n"));
    // An allowance nobody needs any more is removed, so the list stays the truth.
    let stale: Vec<_> = LONG_FUNCTIONS_ALLOWED
        .iter()
        .filter(|(p, n, _)| !allowed_seen.iter().any(|(sp, sn)| sp == p && sn == n))
        .map(|(p, n, why)| format!("{p} fn {n} ({why})"))
        .collect();
    assert!(stale.is_empty(), "allowed long functions that are no longer long; remove them:\n{}", stale.join("\n"));
}
