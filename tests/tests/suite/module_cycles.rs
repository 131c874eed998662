//! No module cycle in any crate: within each crate, the graph of top-level modules (an edge for
//! every `crate::m` a module's code names, comments left out) has no cycle. A cycle means two
//! modules that cannot be read, changed or tested apart. Reads the sources; no build needed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const CRATES: &[&str] = &["engine", "runtime", "coordinator", "worker", "embedded", "glctl", "loadtest"];

/// Every `.rs` file under `dir`, by top-level module name (`lib.rs` and `main.rs` are the root).
fn modules(dir: &Path, top: Option<&str>, out: &mut BTreeMap<String, Vec<String>>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("entry").path();
        let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_owned();
        let module = top.map_or_else(|| name.clone(), str::to_owned);
        if path.is_dir() {
            modules(&path, Some(&module), out);
        } else if path.extension().is_some_and(|e| e == "rs") && !(top.is_none() && (name == "lib" || name == "main")) {
            out.entry(module).or_default().push(std::fs::read_to_string(&path).expect("source"));
        }
    }
}

/// The top-level modules a source names as `crate::m` or inside `crate::{a, b::c}`.
fn named(source: &str) -> BTreeSet<String> {
    let code: String = source
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .map(|l| l.split(" // ").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let ident = |s: &str| s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect::<String>();
    let mut found = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let (mut depth, mut item) = (0, String::new());
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.insert(ident(item.trim()));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 {
                    item.push(c);
                }
            }
            found.insert(ident(item.trim()));
        } else {
            found.insert(ident(rest));
        }
    }
    found
}

/// A cycle of the graph, as a path, if there is one.
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| n == node) {
            let mut found = path[start..].to_vec();
            found.push(node.to_owned());
            return Some(found);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in &graph[node] {
            if let Some(found) = visit(next, graph, path, done) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_crate_has_a_module_cycle() {
    let mut edges = 0;
    for krate in CRATES {
        let mut sources = BTreeMap::new();
        modules(&tests::repo_root().join(krate).join("src"), None, &mut sources);
        let names: BTreeSet<String> = sources.keys().cloned().collect();
        let graph: BTreeMap<String, BTreeSet<String>> = sources
            .iter()
            .map(|(m, files)| {
                let uses = files.iter().flat_map(|s| named(s)).filter(|n| n != m && names.contains(n)).collect();
                (m.clone(), uses)
            })
            .collect();
        edges += graph.values().map(BTreeSet::len).sum::<usize>();
        assert_eq!(cycle(&graph), None, "{krate} has a module cycle");
    }
    assert!(edges > 20, "the check found the modules' dependencies ({edges} edges)");
}

#[test]
fn the_check_finds_a_cycle() {
    let a = named("use crate::b::X;\n// crate::c is only mentioned\nfn f() { crate::{c::Y, d}::z(); }");
    assert_eq!(a, ["b", "c", "d"].iter().map(|s| (*s).to_owned()).collect());
    let graph: BTreeMap<String, BTreeSet<String>> = [("a", vec!["b"]), ("b", vec!["c"]), ("c", vec!["a"])]
        .into_iter()
        .map(|(m, to)| (m.to_owned(), to.into_iter().map(str::to_owned).collect()))
        .collect();
    assert_eq!(cycle(&graph), Some(vec!["a".into(), "b".into(), "c".into(), "a".into()]));
}
