//! The framework's modules stay layered (docs/ARCHITECTURE.md, "Layers of `opsbot`"): each
//! imports only from modules below it. A module added or an import that points upwards fails
//! here, naming the file, the line and both modules.

use std::path::Path;

/// From the bottom up; a module may use the modules listed before it.
const ORDER: &[&str] = &[
    // values
    "text",
    "rich",
    "card",
    "message",
    "pacing",
    "options",
    "lead",
    "store",
    "tls",
    "systemd",
    // records
    "breaker",
    "error",
    "command",
    "healing_log",
    "health",
    "cards",
    "conversation",
    // supervision
    "supervisor",
    // actors
    "transport",
    "outbox",
    "shared",
    "handler",
    "poller",
    "router",
    // config
    "config",
    "settings",
    "http",
    "fetch",
    // runtime
    "logging",
    "status_api",
    "bot",
    "testkit",
    "lib",
];

/// The module a source file belongs to: its first path component (`transport/memory.rs` is
/// part of `transport`).
fn module_of(rel: &Path) -> String {
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_owned()
}

/// `crate::NAME` paths in code, skipping comments and the unit tests at a file's end.
fn crate_paths(source: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (n, line) in source.lines().enumerate() {
        let code = line.trim_start();
        if code.starts_with("#[cfg(test)]") {
            break;
        }
        if code.starts_with("//") {
            continue;
        }
        let code = code.split(" //").next().unwrap_or(code);
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // `crate::{a, b}` names several: each is checked.
            if name.is_empty() && after.starts_with('{') {
                let inner = after[1..].split('}').next().unwrap_or("");
                for part in inner.split(',') {
                    let m = part.trim().split("::").next().unwrap_or("").trim();
                    if !m.is_empty() {
                        found.push((n + 1, m.to_owned()));
                    }
                }
            } else if !name.is_empty() {
                found.push((n + 1, name));
            }
            rest = after;
        }
    }
    found
}

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_module_imports_only_from_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();
    let rank = |m: &str| ORDER.iter().position(|o| *o == m);
    let mut wrong = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let me = module_of(rel);
        let Some(mine) = rank(&me) else {
            wrong.push(format!(
                "{}: module `{me}` has no place in the layers",
                rel.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for (line, used) in crate_paths(&text) {
            if used == me {
                continue;
            }
            match rank(&used) {
                Some(theirs) if theirs < mine => {}
                Some(_) => wrong.push(format!(
                    "{}:{line}: `{me}` uses `{used}`, which is not below it",
                    rel.display()
                )),
                // A re-exported item at the crate root (`crate::Error`) is not a module.
                None if used.starts_with(|c: char| c.is_ascii_uppercase()) => {}
                None => wrong.push(format!(
                    "{}:{line}: `{me}` uses `{used}`, a module with no place in the layers",
                    rel.display()
                )),
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_scanner_sees_paths_in_code_and_not_in_comments() {
    let found = crate_paths(
        "use crate::health::Health;\n\
         // crate::bot in a comment\n\
         /// [`crate::bot::Bot`] in a doc comment\n\
         let x = crate::supervisor::catch(f); // crate::bot\n\
         use crate::{outbox::Say, text};\n\
         #[cfg(test)]\n\
         use crate::bot;\n",
    );
    let names: Vec<&str> = found.iter().map(|(_, m)| m.as_str()).collect();
    assert_eq!(names, ["health", "supervisor", "outbox", "text"]);
}
