//! The library's architecture (docs/ARCHITECTURE.md), checked on its source: every `crate::`
//! path in a module points to its own top-level module or a lower layer, and no file imports a
//! file that imports it back, directly or around a loop. Doc comments and unit tests are left
//! out; `use super::…` counts.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Lowest first; a module may use its own layer's modules only where they are listed before it
/// on the same line.
const LAYERS: &[&[&str]] = &[
    &["alloc", "fsutil", "linalg", "parallel", "data"],
    &["backbone"],
    &["bank"],
    &["detect"],
    &["render"],
    &["fit"],
    &["train", "update"],
    &["runtime", "eval"],
];

/// (layer, position in it) of a top-level module.
fn rank(module: &str) -> (usize, usize) {
    LAYERS
        .iter()
        .enumerate()
        .find_map(|(layer, names)| names.iter().position(|n| *n == module).map(|p| (layer, p)))
        .unwrap_or_else(|| panic!("src/{module}: not in LAYERS (tests/layers.rs, docs/ARCHITECTURE.md)"))
}

/// Every library file's module path (`bank::format`) and its code without comments and unit tests.
fn sources() -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    collect(Path::new("src"), &mut Vec::new(), &mut files);
    files
}

fn collect(dir: &Path, prefix: &mut Vec<String>, files: &mut BTreeMap<String, String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        if path.is_dir() {
            if prefix.is_empty() && name == "cli" {
                continue; // the binary's, above every layer
            }
            prefix.push(name);
            collect(&path, prefix, files);
            prefix.pop();
        } else if path.extension().is_some_and(|e| e == "rs") {
            if prefix.is_empty() && (name == "main" || name == "lib") {
                continue;
            }
            let mut module = prefix.clone();
            if name != "mod" {
                module.push(name);
            }
            files.insert(module.join("::"), code(&std::fs::read_to_string(&path).unwrap()));
        }
    }
}

fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]\nmod tests").next().unwrap();
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths a file names: `crate::a::b…` and `super::…` resolved to module paths.
fn paths(module: &str, code: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    let words: Vec<&str> = code
        .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| w.starts_with("crate::") || w.starts_with("super::"))
        .collect();
    for word in words {
        let mut parts: Vec<String> = word.split("::").filter(|p| !p.is_empty()).map(String::from).collect();
        let mut base: Vec<String> = module.split("::").map(String::from).collect();
        if parts[0] == "crate" {
            base.clear();
            parts.remove(0);
        }
        while parts.first().is_some_and(|p| p == "super") {
            base.pop();
            parts.remove(0);
        }
        base.extend(parts);
        if !base.is_empty() {
            found.push(base);
        }
    }
    found
}

/// The longest prefix of `path` that is a file's module.
fn file_of(path: &[String], files: &BTreeMap<String, String>) -> Option<String> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].join("::"))
        .find(|m| files.contains_key(m))
}

#[test]
fn every_path_points_down_the_layers() {
    let files = sources();
    let tops: BTreeSet<&str> = files.keys().map(|m| m.split("::").next().unwrap()).collect();
    let mut wrong = Vec::new();
    for (module, code) in &files {
        let own = module.split("::").next().unwrap();
        for path in paths(module, code) {
            let target = path[0].as_str();
            if target != own && tops.contains(target) {
                let (a, b) = (rank(own), rank(target));
                if b.0 > a.0 || (b.0 == a.0 && b.1 >= a.1) {
                    wrong.push(format!("{module} uses {}", path.join("::")));
                }
            }
        }
    }
    wrong.sort();
    wrong.dedup();
    assert!(
        wrong.is_empty(),
        "imports pointing up or sideways:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn no_file_imports_a_file_that_imports_it_back() {
    let files = sources();
    let mut edges: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for (module, code) in &files {
        for path in paths(module, code) {
            if let Some(target) = file_of(&path, &files) {
                let related = target.starts_with(&format!("{module}::")) || module.starts_with(&format!("{target}::"));
                if target != *module && !related {
                    edges.entry(module).or_default().insert(target);
                }
            }
        }
    }
    let loops: Vec<String> = Tarjan::components(&edges)
        .into_iter()
        .filter(|c| c.len() > 1)
        .map(|c| c.join(", "))
        .collect();
    assert!(loops.is_empty(), "files importing each other:\n{}", loops.join("\n"));
}

/// Strongly connected components (Tarjan): files that reach each other through imports.
#[derive(Default)]
struct Tarjan<'a> {
    next: usize,
    index: BTreeMap<&'a str, usize>,
    low: BTreeMap<&'a str, usize>,
    stack: Vec<&'a str>,
    components: Vec<Vec<String>>,
}

impl<'a> Tarjan<'a> {
    fn components(edges: &'a BTreeMap<&'a str, BTreeSet<String>>) -> Vec<Vec<String>> {
        let mut t = Tarjan::default();
        for v in edges.keys() {
            if !t.index.contains_key(v) {
                t.visit(v, edges);
            }
        }
        t.components
    }

    fn visit(&mut self, v: &'a str, edges: &'a BTreeMap<&'a str, BTreeSet<String>>) {
        self.index.insert(v, self.next);
        self.low.insert(v, self.next);
        self.next += 1;
        self.stack.push(v);
        for w in edges.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !self.index.contains_key(w) {
                self.visit(w, edges);
                let low = self.low[v].min(self.low[w]);
                self.low.insert(v, low);
            } else if self.stack.contains(&w) {
                let low = self.low[v].min(self.index[w]);
                self.low.insert(v, low);
            }
        }
        if self.low[v] == self.index[v] {
            let mut component = Vec::new();
            while let Some(w) = self.stack.pop() {
                component.push(w.to_string());
                if w == v {
                    break;
                }
            }
            component.sort();
            self.components.push(component);
        }
    }
}
