//! `src/server/` stays layered: no module imports one that (directly or not) imports it back.
//! Reads each module's `super::name` references; fails naming the circle it finds.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Each module of `src/server/` and the sibling modules it refers to.
fn server_imports() -> BTreeMap<String, BTreeSet<String>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/server");
    let modules: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".rs").map(str::to_owned)
        })
        .filter(|m| m != "mod")
        .collect();
    modules
        .iter()
        .map(|m| {
            let text = std::fs::read_to_string(dir.join(format!("{m}.rs"))).unwrap();
            let uses = text
                .match_indices("super::")
                .filter_map(|(at, _)| {
                    let rest = &text[at + "super::".len()..];
                    let end = rest
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .unwrap_or(rest.len());
                    let name = &rest[..end];
                    (name != m && modules.contains(name)).then(|| name.to_owned())
                })
                .collect();
            (m.clone(), uses)
        })
        .collect()
}

/// A circle through `start`, if one exists (depth-first, the path kept).
fn circle_from(
    graph: &BTreeMap<String, BTreeSet<String>>,
    start: &str,
    path: &mut Vec<String>,
) -> Option<Vec<String>> {
    for next in &graph[path.last().unwrap()] {
        if next == start {
            let mut circle = path.clone();
            circle.push(next.clone());
            return Some(circle);
        }
        if !path.contains(next) {
            path.push(next.clone());
            if let Some(circle) = circle_from(graph, start, path) {
                return Some(circle);
            }
            path.pop();
        }
    }
    None
}

#[test]
fn no_server_module_imports_one_that_imports_it_back() {
    let graph = server_imports();
    assert!(graph.len() > 10, "read the modules: {graph:?}");
    assert!(graph["router"].contains("shard"), "references are read");
    for module in graph.keys() {
        let circle = circle_from(&graph, module, &mut vec![module.clone()]);
        assert!(
            circle.is_none(),
            "import circle: {}",
            circle.unwrap().join(" -> ")
        );
    }
}

#[test]
fn a_circle_is_found_when_there_is_one() {
    let edge = |a: &str, b: &[&str]| (a.to_owned(), b.iter().map(|s| s.to_string()).collect());
    let graph: BTreeMap<String, BTreeSet<String>> = [
        edge("a", &["b"]),
        edge("b", &["c"]),
        edge("c", &["a"]),
        edge("d", &[]),
    ]
    .into();
    assert_eq!(
        circle_from(&graph, "a", &mut vec!["a".into()]),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    assert_eq!(circle_from(&graph, "d", &mut vec!["d".into()]), None);
}
