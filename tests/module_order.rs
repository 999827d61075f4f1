//! The top-level modules of `src/` depend on each other in one order, written down in
//! docs/ARCHITECTURE.md ("Dependency order"): a module uses only modules listed before it,
//! so there are no import cycles. This test reads every `crate::name` outside comments.

use std::collections::BTreeSet;
use std::path::Path;

/// The order of docs/ARCHITECTURE.md; modules on one line may not use each other.
const ORDER: &[&[&str]] = &[
    &["config", "protocol", "kinds", "cli", "intern"],
    &["pool"],
    &["cancel"],
    &["server"],
    &["tenant"],
    &["transport"],
    &["auth", "admission"],
    &["shared"],
    &["reload"],
    &["admin"],
    &["session"],
    &["metrics", "localpg", "takeover"],
    &["listener", "demo", "check"],
];

fn level(module: &str) -> Option<usize> {
    ORDER.iter().position(|line| line.contains(&module))
}

fn uses(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or_default();
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.insert(name);
            }
            // `crate::{a, b}`
            if let Some(braced) = rest.strip_prefix('{') {
                let inner = braced.split('}').next().unwrap_or_default();
                for part in inner.split(',') {
                    let name = part.trim().split("::").next().unwrap_or_default();
                    found.insert(name.to_string());
                }
            }
        }
    }
    found
}

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn modules_use_only_modules_listed_before_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let mut problems = Vec::new();
    for path in all {
        let rel = path.strip_prefix(&src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if top == "lib" || top == "main" {
            continue;
        }
        let Some(own) = level(&top) else {
            problems.push(format!("{top} is not in ORDER (and docs/ARCHITECTURE.md)"));
            continue;
        };
        let text = std::fs::read_to_string(&path).unwrap();
        for used in uses(&text) {
            if used == top {
                continue;
            }
            match level(&used) {
                Some(l) if l < own => {}
                Some(_) => problems.push(format!("{} uses {used}", rel.display())),
                None => {}
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
