//! The module layering, held by a test (as `exit.rs` holds the README's exit codes): it reads
//! `src/` at test time and builds the graph of `crate::` paths between the top-level modules (a
//! file or folder directly under `src/`). Two rules:
//!
//! 1. No cycle between top-level modules: every module can be read, and later moved or replaced,
//!    knowing only what is below it.
//! 2. The pure files (`PURE`: policy, formats' pure halves, decisions with time passed in) import
//!    nothing from the files that reach the outside world (`EDGES`: S3, Docker, the restic engine,
//!    SSM, CloudWatch, IMDS, systemd, the control socket, the daemon and the commands), so they
//!    stay testable without any of them. The rule is on direct imports; `PURE_EXCEPTIONS` names
//!    the crossings kept and why.
//! 3. The leaves (`LEAVES`: liveness, snapshot ids, the tree's shared types) import no other
//!    module: the data path marks liveness and systemd reads it, neither through the other.
//! 4. The top (`daemon`, `commands`) is imported by no domain module: only `commands` starts the
//!    daemon.
//!
//! Test modules (`#[cfg(test)] mod … { … }`) are not counted: a test may check a contract across
//! layers (`store::problem`'s table asserts the exit code each class maps to, `exclude`'s tests
//! read the config's default excludes).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Files that decide and never do I/O, relative to `src/`.
const PURE: &[&str] = &[
    "boot.rs",
    "catalog/model.rs",
    "config/diagnose.rs",
    "daemon/policy.rs",
    "daemon/protection.rs",
    "daemon/timetable.rs",
    "duration.rs",
    "format2/head.rs",
    "manifest.rs",
    "ports.rs",
    "restore/plan.rs",
    "retention.rs",
    "runtime/probe.rs",
    "schedule.rs",
    "snapshot_id.rs",
    "store/problem.rs",
    "tree.rs",
];

/// Files that reach the outside world, relative to `src/`.
const EDGES: &[&str] = &[
    "aws.rs",
    "commands",
    "control",
    "daemon/mod.rs",
    "daemon/jobs.rs",
    "daemon/requests.rs",
    "daemon/startup.rs",
    "daemon/supervise.rs",
    "ecr.rs",
    "format2/mod.rs",
    "format2/backend.rs",
    "format2/keyfile.rs",
    "format2/restorer.rs",
    "format2/source.rs",
    "metrics.rs",
    "runtime/docker.rs",
    "secrets.rs",
    "spot.rs",
    "store/mod.rs",
    "systemd.rs",
];

/// Pure files that may import an edge file, each with the reason.
const PURE_EXCEPTIONS: &[(&str, &str, &str)] = &[
    (
        "format2/head.rs",
        "format2/mod.rs",
        "format 2's listing record (`Listed`) is declared beside the engine that lists",
    ),
    (
        "catalog/model.rs",
        "format2/mod.rs",
        "format 2's listing record (`Listed`) is declared beside the engine that lists",
    ),
];

/// Files that import no other module, so that any module may import them.
const LEAVES: &[&str] = &["liveness.rs", "snapshot_id.rs", "tree.rs"];

/// Source with comments removed and string and char literals emptied, so that only code is
/// searched for paths.
fn code_of(source: &str) -> String {
    let bytes = source.as_bytes();
    let mut code = String::with_capacity(source.len());
    let mut i = 0;
    while i < bytes.len() {
        let rest = &source[i..];
        if rest.starts_with("//") {
            i += rest.find('\n').unwrap_or(rest.len());
        } else if rest.starts_with("/*") {
            let mut depth = 0;
            while i < bytes.len() {
                if bytes[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if bytes[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if let Some(hashes) = raw_string(rest, &bytes[..i]) {
            let close = format!("\"{}", "#".repeat(hashes));
            let body = 1 + hashes + 1;
            i += body
                + rest[body..]
                    .find(&close)
                    .map_or(rest.len() - body, |end| end + close.len());
            code.push_str("\"\"");
        } else if rest.starts_with('"') {
            i += 1;
            while i < bytes.len() && bytes[i] != b'"' {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            code.push_str("\"\"");
        } else if let Some(len) = char_literal(rest) {
            i += len;
            code.push_str("' '");
        } else {
            let c = rest.chars().next().expect("i is below the length");
            code.push(c);
            i += c.len_utf8();
        }
    }
    code
}

/// The number of `#` of the raw string (`r"…"`, `r#"…"#`, `br"…"`) that `rest` starts with, if it
/// starts one; `before` is the source before it (`r#type` is an identifier, `bar"` no raw string).
fn raw_string(rest: &str, before: &[u8]) -> Option<usize> {
    let ident = |b: &u8| b.is_ascii_alphanumeric() || *b == b'_';
    let prefix_ok = match before {
        [.., b'b'] => !before[..before.len() - 1].last().is_some_and(ident),
        _ => !before.last().is_some_and(ident),
    };
    let after_r = rest.strip_prefix('r')?;
    let hashes = after_r.bytes().take_while(|&b| b == b'#').count();
    (prefix_ok && after_r[hashes..].starts_with('"')).then_some(hashes)
}

/// The length of the char literal `rest` starts with (`'a'`, `'\n'`, `'\u{1F600}'`), if it is
/// one and not a lifetime.
fn char_literal(rest: &str) -> Option<usize> {
    let body = rest.strip_prefix('\'')?;
    let end = if body.starts_with('\\') {
        2 + body.get(2..)?.find('\'')?
    } else {
        body.chars().next()?.len_utf8()
    };
    (body[end..].starts_with('\'')).then_some(end + 2)
}

/// `code` without its `#[cfg(test)] mod name { … }` blocks.
fn without_tests(code: &str) -> String {
    let mut kept = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        kept.push_str(&rest[..at]);
        let after = &rest[at + "#[cfg(test)]".len()..];
        let item = after.trim_start();
        let is_mod = item.strip_prefix("pub ").unwrap_or(item).starts_with("mod ");
        match item.find(['{', ';']) {
            Some(open) if is_mod && item.as_bytes()[open] == b'{' => {
                let mut depth = 0;
                let mut end = item.len();
                for (j, b) in item.bytes().enumerate().skip(open) {
                    match b {
                        b'{' => depth += 1,
                        b'}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = j + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                rest = &item[end..];
            }
            // A test-only `use` or item outside a test module is still test code: skip the
            // attribute only, and count what follows (stricter, never looser).
            _ => rest = after,
        }
    }
    kept.push_str(rest);
    kept
}

/// Every path `code` names after `crate::` (or `super::` from `module_path`), each as the list of
/// its segments from the crate root. `crate::{a, b::{c, d}}` gives `a`, `b::c` and `b::d`.
fn paths_of(code: &str, module_path: &[String]) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    for (prefix, base) in [("crate::", Vec::new()), ("super::", parent_of(module_path))] {
        let mut from = 0;
        while let Some(at) = code[from..].find(prefix) {
            let start = from + at;
            from = start + prefix.len();
            let before = code[..start].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let mut base = base.clone();
            let mut tail = &code[from..];
            // `super::super::`
            while prefix == "super::" && tail.starts_with("super::") {
                base.pop();
                tail = &tail["super::".len()..];
            }
            expand(tail, &base, &mut found);
        }
    }
    found
}

/// The module that `super` names from a file whose module is `module_path`.
fn parent_of(module_path: &[String]) -> Vec<String> {
    let mut parent = module_path.to_vec();
    parent.pop();
    parent
}

/// Expands one use tree at the start of `tail` under `base` into `found`.
fn expand(tail: &str, base: &[String], found: &mut Vec<Vec<String>>) {
    let mut path = base.to_vec();
    let mut rest = tail;
    loop {
        rest = rest.trim_start();
        if let Some(group) = rest.strip_prefix('{') {
            for item in split_group(group) {
                expand(item, &path, found);
            }
            return;
        }
        let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        if name.is_empty() || name == "self" {
            break;
        }
        rest = &rest[name.len()..];
        path.push(name);
        match rest.strip_prefix("::") {
            Some(next) => rest = next,
            None => break,
        }
    }
    if !path.is_empty() {
        found.push(path);
    }
}

/// The items of a `{…}` group whose opening brace is already consumed, split at top-level commas.
fn split_group(group: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (j, b) in group.bytes().enumerate() {
        match b {
            b'{' => depth += 1,
            b'}' if depth == 0 => {
                items.push(&group[start..j]);
                return items;
            }
            b'}' => depth -= 1,
            b',' if depth == 0 => {
                items.push(&group[start..j]);
                start = j + 1;
            }
            _ => {}
        }
    }
    items
}

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// A file under `src/`, relative to it (`daemon/mod.rs`), and its module path (`["daemon"]`).
fn module_of(relative: &str) -> Vec<String> {
    let trimmed = relative.trim_end_matches(".rs").trim_end_matches("/mod");
    trimmed.split('/').map(str::to_string).collect()
}

/// The file a path lands in: the deepest module of it that is a file under `src/`.
fn file_of(path: &[String], files: &BTreeSet<String>) -> Option<String> {
    (1..=path.len()).rev().find_map(|n| {
        let module = path[..n].join("/");
        [format!("{module}.rs"), format!("{module}/mod.rs")]
            .into_iter()
            .find(|f| files.contains(f))
    })
}

/// What each file under `src/` imports: file -> files (both relative to `src/`). `lib.rs`,
/// `main.rs` and this file are left out.
fn imports(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let relative = |p: &Path| p.strip_prefix(src).expect("under src/").to_string_lossy().into_owned();
    let all: Vec<PathBuf> = rust_files(src);
    let files: BTreeSet<String> = all
        .iter()
        .map(|p| relative(p))
        .filter(|f| !matches!(f.as_str(), "lib.rs" | "main.rs" | "layers.rs"))
        .collect();
    let mut graph = BTreeMap::new();
    for file in &files {
        let source = std::fs::read_to_string(src.join(file)).expect("a readable source file");
        let code = without_tests(&code_of(&source));
        let targets = paths_of(&code, &module_of(file))
            .iter()
            .filter_map(|path| file_of(path, &files))
            .filter(|target| target != file)
            .collect();
        graph.insert(file.clone(), targets);
    }
    graph
}

/// The top-level module of a file (`daemon/jobs.rs` -> `daemon`).
fn top_of(file: &str) -> String {
    module_of(file)[0].clone()
}

/// The graph between top-level modules.
fn top_level(files: &BTreeMap<String, BTreeSet<String>>) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (file, targets) in files {
        let from = top_of(file);
        let edges = graph.entry(from.clone()).or_default();
        edges.extend(targets.iter().map(|t| top_of(t)).filter(|to| *to != from));
    }
    graph
}

/// Cycles of `graph`, one for each edge back to a module still being visited in a depth-first
/// walk (so none when there is no cycle, and at least one in each knot), each as the modules
/// along it with the first repeated at the end.
fn find_cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit<'a>(
        node: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        marks: &mut BTreeMap<&'a str, Mark>,
        stack: &mut Vec<&'a str>,
        cycles: &mut Vec<Vec<String>>,
    ) {
        marks.insert(node, Mark::Open);
        stack.push(node);
        for next in graph.get(node).into_iter().flatten() {
            match marks.get(next.as_str()) {
                Some(Mark::Open) => {
                    let from = stack
                        .iter()
                        .position(|n| n == next)
                        .expect("an open node is on the stack");
                    let mut cycle: Vec<String> = stack[from..].iter().map(|n| n.to_string()).collect();
                    cycle.push(next.clone());
                    cycles.push(cycle);
                }
                Some(Mark::Done) => {}
                None => visit(next, graph, marks, stack, cycles),
            }
        }
        stack.pop();
        marks.insert(node, Mark::Done);
    }
    let mut marks = BTreeMap::new();
    let mut cycles = Vec::new();
    for node in graph.keys() {
        if !marks.contains_key(node.as_str()) {
            visit(node, graph, &mut marks, &mut Vec::new(), &mut cycles);
        }
    }
    cycles
}

/// Whether `file` is one of `list`'s files or under one of its folders.
fn listed(file: &str, list: &[&str]) -> bool {
    list.iter()
        .any(|entry| file == *entry || file.starts_with(&format!("{entry}/")))
}

mod tests {
    use super::*;

    fn src() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
    }

    fn graph(edges: &[(&str, &str)]) -> BTreeMap<String, BTreeSet<String>> {
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (from, to) in edges {
            graph.entry(from.to_string()).or_default().insert(to.to_string());
            graph.entry(to.to_string()).or_default();
        }
        graph
    }

    #[test]
    fn no_cycle_between_top_level_modules() {
        let modules = top_level(&imports(&src()));
        assert!(modules.len() > 30, "src/ read: {} modules", modules.len());
        let cycles: Vec<String> = find_cycles(&modules).iter().map(|c| c.join(" -> ")).collect();
        assert!(
            cycles.is_empty(),
            "import cycles between top-level modules (move the shared item below both): {}",
            cycles.join("; ")
        );
    }

    #[test]
    fn pure_files_import_no_edge() {
        let files = imports(&src());
        for file in PURE.iter().chain(EDGES) {
            assert!(
                files.keys().any(|f| listed(f, &[file])),
                "{file} is listed in layers.rs but not in src/"
            );
        }
        let crossings: Vec<String> = files
            .iter()
            .filter(|(file, _)| listed(file, PURE))
            .flat_map(|(file, targets)| {
                targets
                    .iter()
                    .filter(|t| listed(t, EDGES))
                    .filter(move |t| !PURE_EXCEPTIONS.iter().any(|(f, to, _)| f == file && to == t))
                    .map(move |t| format!("{file} imports {t}"))
            })
            .collect();
        assert!(crossings.is_empty(), "a pure file imports an edge: {crossings:?}");
    }

    #[test]
    fn no_domain_module_imports_the_daemon_or_the_commands() {
        let modules = top_level(&imports(&src()));
        let upward: Vec<String> = modules
            .iter()
            .flat_map(|(from, to)| to.iter().map(move |to| (from, to)))
            .filter(|(from, to)| *to == "commands" || (*to == "daemon" && *from != "commands"))
            .map(|(from, to)| format!("{from} imports {to}"))
            .collect();
        assert!(upward.is_empty(), "{upward:?}");
    }

    #[test]
    fn leaves_import_no_module() {
        let files = imports(&src());
        for leaf in LEAVES {
            let targets = files
                .get(*leaf)
                .unwrap_or_else(|| panic!("{leaf} is listed in layers.rs but not in src/"));
            assert!(targets.is_empty(), "{leaf} imports {targets:?}");
        }
    }

    #[test]
    fn paths_are_read_from_code_only() {
        let source = r##"
            use crate::{a::{self, X}, b::Y};
            use crate::c;
            // crate::commented::out
            /* crate::block::comment, /* nested */ … */
            const S: &str = "crate::in_a_string";
            fn f() { let _ = crate::d::e::f(); let _ = super::sibling::G; let _ = ('{', '\'', b'"'); }
            fn g<'a>(r#type: &'a str) -> &'a str { let _ = br"crate::raw"; let _ = r#"crate::raw"#; r#type }
            #[cfg(test)]
            mod tests { use crate::only_in_tests; }
        "##;
        let code = without_tests(&code_of(source));
        let mut paths: Vec<String> = paths_of(&code, &["top".into(), "file".into()])
            .iter()
            .map(|p| p.join("::"))
            .collect();
        paths.sort();
        assert_eq!(paths, ["a", "a::X", "b::Y", "c", "d::e::f", "top::sibling::G"]);
    }

    #[test]
    fn a_cycle_is_found_and_named() {
        assert!(find_cycles(&graph(&[("a", "b"), ("b", "c"), ("a", "c")])).is_empty());
        let cycles = find_cycles(&graph(&[
            ("a", "b"),
            ("b", "c"),
            ("c", "a"),
            ("c", "d"),
            ("d", "e"),
            ("e", "d"),
        ]));
        assert_eq!(cycles, [["a", "b", "c", "a"].as_slice(), &["d", "e", "d"]]);
    }
}
