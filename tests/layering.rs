#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test
//! The crate's module graph is a DAG: no module reaches itself through code
//! paths (`use crate::…`, `crate::a::b(…)`, `super::…`, serde's
//! `with = "crate::…"`). Doc links and `#[cfg(test)]` items do not count: a
//! test may use anything, and `[`crate::x`]` in a comment is not a dependency.
//!
//! A node is a top-level module (`src/x.rs` or `src/x/`), except that each child
//! of a folder in [`GROUPS`] is a node of its own, so a group of core files
//! still has to be layered inside; and the folders themselves, each one node, layer too.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

/// Folders under `src/` whose children are nodes of their own.
const GROUPS: &[&str] = &["engine", "policy", "rungs", "tools"];

/// Where one edge is written.
type Sites = Vec<String>;
/// From node → to node → the places that make the edge.
type Graph = BTreeMap<String, BTreeMap<String, Sites>>;

/// Source with comments blanked (`code`), and also with string contents
/// blanked (`shape`, for brace matching); both keep every newline, so
/// positions and line numbers stay those of the file.
fn lex(src: &str) -> (Vec<char>, Vec<char>) {
    let s: Vec<char> = src.chars().collect();
    let mut code = s.clone();
    let mut shape = s.clone();
    let blank = |v: &mut Vec<char>, from: usize, to: usize| {
        for c in &mut v[from..to] {
            if *c != '\n' {
                *c = ' ';
            }
        }
    };
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    let at = |i: usize| s.get(i).copied().unwrap_or('\0');
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        let prev = if i > 0 { s[i - 1] } else { ' ' };
        if c == '/' && at(i + 1) == '/' {
            let end = (i..s.len()).find(|&j| s[j] == '\n').unwrap_or(s.len());
            blank(&mut code, i, end);
            blank(&mut shape, i, end);
            i = end;
        } else if c == '/' && at(i + 1) == '*' {
            let (mut depth, mut j) = (1, i + 2);
            while j < s.len() && depth > 0 {
                if s[j] == '/' && at(j + 1) == '*' {
                    depth += 1;
                    j += 2;
                } else if s[j] == '*' && at(j + 1) == '/' {
                    depth -= 1;
                    j += 2;
                } else {
                    j += 1;
                }
            }
            blank(&mut code, i, j);
            blank(&mut shape, i, j);
            i = j;
        } else if !ident(prev) && (c == 'r' || (c == 'b' && at(i + 1) == 'r')) && {
            let h = i + if c == 'b' { 2 } else { 1 };
            let hashes = (h..s.len()).take_while(|&j| s[j] == '#').count();
            at(h + hashes) == '"'
        } {
            let h = i + if c == 'b' { 2 } else { 1 };
            let hashes = (h..s.len()).take_while(|&j| s[j] == '#').count();
            let open = h + hashes + 1;
            let mut j = open;
            while j < s.len() && !(s[j] == '"' && (1..=hashes).all(|k| at(j + k) == '#')) {
                j += 1;
            }
            blank(&mut shape, open, j.min(s.len()));
            i = (j + 1 + hashes).min(s.len());
        } else if c == '"' {
            let mut j = i + 1;
            while j < s.len() && s[j] != '"' {
                j += if s[j] == '\\' { 2 } else { 1 };
            }
            blank(&mut shape, i + 1, j.min(s.len()));
            i = (j + 1).min(s.len());
        } else if c == '\'' {
            // A char literal ('x', '\n', '\''), else a lifetime.
            let end = if at(i + 1) == '\\' {
                (i + 3..s.len()).find(|&j| s[j] == '\'')
            } else if at(i + 2) == '\'' {
                Some(i + 2)
            } else {
                None
            };
            match end {
                Some(end) => {
                    blank(&mut shape, i + 1, end);
                    i = end + 1;
                }
                None => i += 1,
            }
        } else {
            i += 1;
        }
    }
    // `#[cfg(test)]` items (modules, functions, uses) are not the crate's graph.
    let attr: Vec<char> = "#[cfg(test)]".chars().collect();
    let mut i = 0;
    while i + attr.len() <= shape.len() {
        if shape[i..i + attr.len()] != attr[..] {
            i += 1;
            continue;
        }
        let (mut depth, mut j) = (0i32, i + attr.len());
        let mut opened = false;
        while j < shape.len() {
            match shape[j] {
                '(' | '[' => depth += 1,
                '{' => {
                    depth += 1;
                    opened = true;
                }
                ')' | ']' => depth -= 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 && opened {
                        break;
                    }
                }
                ';' if depth == 0 => break,
                _ => {}
            }
            j += 1;
        }
        let end = (j + 1).min(shape.len());
        blank(&mut code, i, end);
        blank(&mut shape, i, end);
        i = end;
    }
    (code, shape)
}

/// The paths of a use tree (or of one inline path) starting at `*i`, each
/// prefixed with `prefix`: `{a, b::{c, d as e}, f::*}` gives `a`, `b::c`,
/// `b::d`, `f`.
fn tree(s: &[char], i: &mut usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    let skip_ws = |i: &mut usize| {
        while *i < s.len() && s[*i].is_whitespace() {
            *i += 1;
        }
    };
    skip_ws(i);
    if s.get(*i) == Some(&'{') {
        *i += 1;
        loop {
            skip_ws(i);
            match s.get(*i) {
                None => return,
                Some('}') => {
                    *i += 1;
                    return;
                }
                Some(',') => *i += 1,
                Some(_) => {
                    let before = *i;
                    tree(s, i, prefix.clone(), out);
                    if *i == before {
                        *i += 1;
                    }
                }
            }
        }
    }
    let start = *i;
    while *i < s.len() && (s[*i].is_alphanumeric() || s[*i] == '_') {
        *i += 1;
    }
    let seg: String = s[start..*i].iter().collect();
    if seg.is_empty() {
        // `*`, or the end of an inline path (`::<T>`, `(`).
        if s.get(*i) == Some(&'*') {
            *i += 1;
        }
        if !prefix.is_empty() {
            out.push(prefix);
        }
        return;
    }
    let mut path = prefix;
    if seg != "self" {
        path.push(seg);
    }
    let mut j = *i;
    skip_ws(&mut j);
    if s.get(j) == Some(&':') && s.get(j + 1) == Some(&':') {
        *i = j + 2;
        tree(s, i, path, out);
        return;
    }
    // `name as alias`: the alias names nothing in the graph.
    if s[j..].starts_with(&['a', 's']) && s.get(j + 2).is_some_and(|c| c.is_whitespace()) {
        j += 2;
        skip_ws(&mut j);
        while j < s.len() && (s[j].is_alphanumeric() || s[j] == '_') {
            j += 1;
        }
        *i = j;
    }
    out.push(path);
}

/// Every crate path in `src` (comments and test items stripped), absolute
/// from the crate root, with its line; `module` is the file's module path
/// (for `super::`).
fn references(src: &str, module: &[String]) -> Vec<(Vec<String>, usize)> {
    let (code, _) = lex(src);
    let mut found = Vec::new();
    let mut line = 1;
    for i in 0..code.len() {
        if code[i] == '\n' {
            line += 1;
        }
        let prev = if i > 0 { code[i - 1] } else { ' ' };
        if prev.is_alphanumeric() || prev == '_' || prev == ':' {
            continue;
        }
        for (word, is_super) in [("crate::", false), ("super::", true)] {
            let w: Vec<char> = word.chars().collect();
            if code[i..].starts_with(&w) {
                let mut paths = Vec::new();
                let mut j = if is_super { i } else { i + w.len() };
                tree(&code, &mut j, Vec::new(), &mut paths);
                for path in paths {
                    let ups = path.iter().take_while(|s| *s == "super").count();
                    let abs = if is_super {
                        let keep = module.len().saturating_sub(ups);
                        module[..keep].iter().chain(&path[ups..]).cloned().collect()
                    } else {
                        path
                    };
                    found.push((abs, line));
                }
            }
        }
    }
    found
}

/// The module path of a file under `src/` (`a/b.rs` → `a::b`, `a/mod.rs` → `a`).
fn module_of(rel: &str) -> Vec<String> {
    let mut parts: Vec<String> = rel.trim_end_matches(".rs").split('/').map(String::from).collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// The node a module path belongs to, if it is one of `nodes`.
fn node_of(
    path: &[String],
    nodes: &BTreeSet<String>,
    groups: &[&str],
    roots: &HashMap<String, String>,
) -> Option<String> {
    let first = path.first()?;
    if groups.contains(&first.as_str()) {
        if let Some(child) = path.get(1) {
            let node = format!("{first}::{child}");
            if nodes.contains(&node) {
                return Some(node);
            }
        }
        return Some(first.clone());
    }
    if nodes.contains(first) {
        return Some(first.clone());
    }
    roots.get(first).cloned()
}

/// The module graph of `files` (paths relative to `src/`, `/`-separated, with
/// their text). `lib.rs` is the root: its `pub use` re-exports resolve
/// `crate::Name` to the module that defines it.
fn graph(files: &[(String, String)], groups: &[&str]) -> Graph {
    let is_root = |rel: &str| rel == "lib.rs" || rel == "main.rs" || rel.starts_with("bin/");
    let node_of_file = |rel: &str| -> String {
        let m = module_of(rel);
        match m.as_slice() {
            [g, child, ..] if groups.contains(&g.as_str()) => format!("{g}::{child}"),
            [top, ..] => top.clone(),
            [] => String::new(),
        }
    };
    let nodes: BTreeSet<String> = files
        .iter()
        .filter(|(r, _)| !is_root(r))
        .map(|(r, _)| node_of_file(r))
        .collect();
    let mut roots = HashMap::new();
    for (_, text) in files.iter().filter(|(r, _)| r == "lib.rs") {
        let (code, _) = lex(text);
        let pat: Vec<char> = "pub use ".chars().collect();
        for i in 0..code.len() {
            if code[i..].starts_with(&pat) {
                let mut paths = Vec::new();
                let mut j = i + pat.len();
                tree(&code, &mut j, Vec::new(), &mut paths);
                for mut path in paths {
                    if path.first().is_some_and(|s| s == "crate") {
                        path.remove(0);
                    }
                    let (Some(name), Some(node)) = (path.last(), node_of(&path, &nodes, groups, &HashMap::new()))
                    else {
                        continue;
                    };
                    roots.insert(name.clone(), node);
                }
            }
        }
    }
    let mut g = Graph::new();
    for (rel, text) in files.iter().filter(|(r, _)| !is_root(r)) {
        let from = node_of_file(rel);
        g.entry(from.clone()).or_default();
        for (path, line) in references(text, &module_of(rel)) {
            if let Some(to) = node_of(&path, &nodes, groups, &roots) {
                if to != from {
                    let sites = g.entry(from.clone()).or_default().entry(to).or_default();
                    let site = format!("src/{rel}:{line}");
                    if sites.last() != Some(&site) {
                        sites.push(site);
                    }
                }
            }
        }
    }
    g
}

/// One cycle of `g`, as its nodes in order, if there is one.
fn cycle(g: &Graph) -> Option<Vec<String>> {
    fn visit(n: &str, g: &Graph, state: &mut HashMap<String, u8>, stack: &mut Vec<String>) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for to in g.get(n).into_iter().flat_map(|e| e.keys()) {
            match state.get(to.as_str()) {
                Some(1) => {
                    let at = stack.iter().position(|s| s == to).unwrap_or(0);
                    return Some(stack[at..].to_vec());
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(to, g, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = HashMap::new();
    for n in g.keys() {
        if !state.contains_key(n.as_str()) {
            if let Some(c) = visit(n, g, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

/// A cycle's modules and the places of each of its edges.
fn describe(g: &Graph, c: &[String]) -> String {
    let mut out = format!("module cycle: {} -> {}\n", c.join(" -> "), c[0]);
    for (k, from) in c.iter().enumerate() {
        let to = &c[(k + 1) % c.len()];
        let sites = &g[from][to];
        out.push_str(&format!("  {from} -> {to}: {}\n", sites.join(", ")));
    }
    out
}

fn read_src(dir: &Path, rel: &str, out: &mut Vec<(String, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read src dir")
        .map(|e| e.expect("entry").path())
        .collect();
    entries.sort();
    for p in entries {
        let name = p.file_name().expect("name").to_string_lossy().to_string();
        let r = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        if p.is_dir() {
            read_src(&p, &r, out);
        } else if name.ends_with(".rs") {
            out.push((r, std::fs::read_to_string(&p).expect("read source")));
        }
    }
}

#[test]
fn the_module_graph_has_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    read_src(&src, "", &mut files);
    assert!(files.len() > 20, "read the crate's sources: {}", files.len());
    let g = graph(&files, GROUPS);
    // The checker sees the edges that exist: the splicer uses the ladder.
    assert!(
        g["engine::splice"].contains_key("policy::ladder"),
        "{:?}",
        g["engine::splice"].keys().collect::<Vec<_>>()
    );
    if let Some(c) = cycle(&g) {
        panic!("{}", describe(&g, &c));
    }
    // The folders layer too: with each group one node, still no cycle
    // (vocabulary → provider → rungs → policy → spec → engine → oracle, config → record → proxy, dashboard → tools).
    let folders = graph(&files, &[]);
    assert!(
        folders["engine"].contains_key("policy"),
        "{:?}",
        folders["engine"].keys().collect::<Vec<_>>()
    );
    if let Some(c) = cycle(&folders) {
        panic!("{}", describe(&folders, &c));
    }
}

fn files(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(p, t)| (p.to_string(), t.to_string())).collect()
}

fn tops(src: &str) -> Vec<String> {
    let mut t: Vec<String> = references(src, &["here".into()])
        .into_iter()
        .filter_map(|(p, _)| p.first().cloned())
        .collect();
    t.dedup();
    t
}

#[test]
fn grouped_uses_and_inline_paths_are_references() {
    let src =
        "use crate::{a, b::c, d::{e, f as g}, h::*};\nfn x() { crate::i::j::<u8>(); }\n#[serde(with = \"crate::k\")]\n";
    assert_eq!(tops(src), ["a", "b", "d", "h", "i", "k"]);
    let lines: Vec<usize> = references(src, &[]).into_iter().map(|(_, l)| l).collect();
    assert_eq!(lines, [1, 1, 1, 1, 1, 2, 3]);
    let paths: Vec<String> = references("use crate::d::{e, f::g};", &[])
        .into_iter()
        .map(|(p, _)| p.join("::"))
        .collect();
    assert_eq!(paths, ["d::e", "d::f::g"]);
}

#[test]
fn comments_are_not_references_but_code_after_a_url_is() {
    let src = "// use crate::a;\n/// [`crate::b`]\n//! crate::c\n/* crate::d /* nested */ crate::e */\nlet u = \"http://x\"; crate::f::g();\nlet r = r#\"// \"#; crate::h::i();\n";
    assert_eq!(tops(src), ["f", "h"]);
}

#[test]
fn test_modules_and_test_items_are_left_out() {
    let src = "use crate::before;\n#[cfg(test)]\nmod tests {\n    use crate::t;\n    fn f() { let s = \"}\"; let c = '}'; crate::u::v(); }\n}\n#[cfg(test)]\nuse crate::w;\nuse crate::after;\n";
    assert_eq!(tops(src), ["before", "after"]);
    assert_eq!(references(src, &[]).last().map(|(_, l)| *l), Some(9));
}

#[test]
fn super_resolves_against_the_files_module() {
    let paths: Vec<String> = references(
        "use super::x::Y;\nuse super::super::z;",
        &["g".into(), "m".into(), "n".into()],
    )
    .into_iter()
    .map(|(p, _)| p.join("::"))
    .collect();
    assert_eq!(paths, ["g::m::x::Y", "g::z"]);
}

#[test]
fn a_two_module_cycle_is_reported_with_its_edges() {
    let g = graph(
        &files(&[
            ("lib.rs", "pub mod a;\npub mod b;\npub use b::Thing;\n"),
            ("a.rs", "//! A.\nuse crate::Thing;\n"),
            ("b/mod.rs", "mod inner;\n"),
            ("b/inner.rs", "fn f() {\n    crate::a::g();\n}\n"),
            ("c.rs", "use crate::{a, b};\n"),
        ]),
        &[],
    );
    let c = cycle(&g).expect("a <-> b is a cycle");
    let text = describe(&g, &c);
    assert!(text.contains("a -> b: src/a.rs:2"), "{text}");
    assert!(text.contains("b -> a: src/b/inner.rs:2"), "{text}");
    assert!(!text.contains("src/c.rs"), "c uses both but is on no cycle: {text}");
    // Without the back edge it is a DAG.
    let g = graph(
        &files(&[("a.rs", "use crate::b::X;\n"), ("b.rs", "/// [`crate::a`]\n")]),
        &[],
    );
    assert_eq!(cycle(&g), None, "{g:?}");
}

#[test]
fn children_of_a_group_are_nodes_of_their_own() {
    let list = files(&[
        ("engine/mod.rs", "pub mod ladder;\npub mod splice;\n"),
        ("engine/splice.rs", "use super::ladder::Route;\n"),
        ("engine/ladder.rs", "use crate::engine::splice::Splicer;\n"),
    ]);
    assert_eq!(cycle(&graph(&list, &[])), None, "one node without the group");
    let g = graph(&list, &["engine"]);
    let c = cycle(&g).expect("ladder <-> splice inside the group");
    assert_eq!(c.len(), 2, "{c:?}");
    assert!(describe(&g, &c).contains("engine::splice -> engine::ladder: src/engine/splice.rs:1"));
}
