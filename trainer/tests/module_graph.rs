//! No import circles between the trainer's modules: no two files import each other, directly
//! or around a loop.
//!
//! The graph is built from the source itself. Every `src/**/*.rs` file is a node (a module file
//! and its submodules are separate nodes); a file depends on another when it names it by an
//! absolute `crate::…` path (in a `use` or inline, grouped `crate::{a, b::c}` included) or a
//! relative `super::…` / `self::…` path. Comments and string literals are not read; a parent
//! declaring its children (`mod x;`) is not an import, nor a file naming itself, nor test code
//! (`#[cfg(test)]` modules and `use`s: a test may drive its module through a higher one).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

#[test]
fn no_two_trainer_modules_import_each_other() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = module_graph(&src);
    assert!(graph.len() > 20, "read {} files under {}", graph.len(), src.display());
    let cycles = cycles(&graph);
    assert!(
        cycles.is_empty(),
        "import circles between the trainer's modules:\n{}",
        cycles.iter().map(|c| format!("  {}", c.join(" -> ").replace(" -> \n", "\n"))).collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn the_graph_sees_each_kind_of_reference() {
    let files: BTreeMap<Vec<String>, String> = [
        (vec![], "mod a; mod b; pub use a::X;"),
        (vec!["a"], "use crate::{b::{self, Y}, c};\n// use crate::d;\nfn f() { let _ = \"crate::d::Z\"; }"),
        (
            vec!["b"],
            "pub(crate) fn g() { super::a::X; crate::c::h(); }\n#[cfg(test)] mod tests { use super::*; use crate::d; }",
        ),
        (vec!["c"], "mod inner { use super::super::d::W; }"),
        (vec!["c", "e"], "use super::F; use self::g::H;"),
        (vec!["c", "e", "g"], "use crate::d;"),
        (vec!["d"], "fn d() { let _ = '{'; let _: &'static str = r#\"crate::a\"#; }"),
    ]
    .into_iter()
    .map(|(m, s)| (m.into_iter().map(String::from).collect(), s.to_string()))
    .collect();
    let graph = graph_of(&files);
    let edges = |m: &str| -> Vec<String> { graph[m].iter().cloned().collect() };
    assert_eq!(edges("crate"), Vec::<String>::new(), "declaring and re-exporting children is not an import");
    assert_eq!(edges("crate::a"), ["crate::b", "crate::c"]);
    assert_eq!(edges("crate::b"), ["crate::a", "crate::c"], "test code is not an import");
    assert_eq!(edges("crate::c"), ["crate::d"]);
    assert_eq!(edges("crate::c::e"), ["crate::c", "crate::c::e::g"]);
    assert_eq!(edges("crate::d"), Vec::<String>::new());
    assert_eq!(cycles(&graph), [vec!["crate::a", "crate::b", "crate::a"]]);
}

type Graph = BTreeMap<String, BTreeSet<String>>;

/// Module path (`["data", "rows"]`) → source, for every `.rs` file under `src`.
fn module_graph(src: &Path) -> Graph {
    let mut files = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path: PathBuf = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let relative = path.strip_prefix(src).unwrap().with_extension("");
                let mut module: Vec<String> =
                    relative.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
                if matches!(module.last().map(String::as_str), Some("mod" | "lib" | "main")) {
                    module.pop();
                }
                files.insert(module, std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    graph_of(&files)
}

fn name(module: &[String]) -> String {
    std::iter::once("crate").chain(module.iter().map(String::as_str)).collect::<Vec<_>>().join("::")
}

fn graph_of(files: &BTreeMap<Vec<String>, String>) -> Graph {
    let mut graph = Graph::new();
    for (module, source) in files {
        let mut edges = BTreeSet::new();
        for path in referenced_paths(module, source) {
            // The longest prefix that is a file: `crate::data::rows::Collated` is data/rows.rs.
            let file = (0..=path.len()).rev().map(|n| &path[..n]).find(|p| files.contains_key(*p));
            if let Some(file) = file.filter(|f| *f != module.as_slice()) {
                edges.insert(name(file));
            }
        }
        graph.insert(name(module), edges);
    }
    graph
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    PathSep,
    Punct(char),
}

/// The source's tokens with comments, strings and character literals left out.
fn tokens(source: &str) -> Vec<Token> {
    let chars: Vec<char> = source.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if (c == 'r' || c == 'b') && is_raw_string(&chars[i..]) {
            let start = i + if c == 'b' { 2 } else { 1 };
            let hashes = chars[start..].iter().take_while(|&&h| h == '#').count();
            let close: Vec<char> = std::iter::once('"').chain(std::iter::repeat_n('#', hashes)).collect();
            i = start + hashes + 1;
            while i < chars.len() && !chars[i..].starts_with(&close) {
                i += 1;
            }
            i += close.len();
        } else if c == '\'' {
            // A character literal ('x', '\n', '\u{..}'), or a lifetime ('a), which is skipped too.
            if next == Some('\\') {
                i += 2;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if chars.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
            }
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Token::Ident(chars[start..i].iter().collect()));
        } else if c == ':' && next == Some(':') {
            out.push(Token::PathSep);
            i += 2;
        } else {
            if !c.is_whitespace() {
                out.push(Token::Punct(c));
            }
            i += 1;
        }
    }
    out
}

fn is_raw_string(chars: &[char]) -> bool {
    let rest = if chars[0] == 'b' { &chars[1..] } else { chars };
    if rest.first() != Some(&'r') {
        return false;
    }
    let hashes = rest[1..].iter().take_while(|&&h| h == '#').count();
    rest.get(1 + hashes) == Some(&'"')
}

/// Every absolute module path the file names: `crate::…`, `super::…` and `self::…` paths,
/// with grouped imports expanded, resolved against the (inline) module they appear in.
fn referenced_paths(module: &[String], source: &str) -> Vec<Vec<String>> {
    let tokens = tokens(source);
    let mut paths = Vec::new();
    // Inline modules (`mod tests { … }`) open at these brace depths.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth: usize = 0;
    let mut i = 0;
    while i < tokens.len() {
        let after_sep = i > 0 && tokens[i - 1] == Token::PathSep;
        match &tokens[i] {
            Token::Punct('{') => depth += 1,
            Token::Punct('}') => {
                depth = depth.saturating_sub(1);
                while inline.last().is_some_and(|(_, d)| *d > depth) {
                    inline.pop();
                }
            }
            Token::Ident(kw) if kw == "mod" => {
                if let (Some(Token::Ident(m)), Some(Token::Punct('{'))) = (tokens.get(i + 1), tokens.get(i + 2)) {
                    inline.push((m.clone(), depth + 1));
                }
            }
            // Test code (`#[cfg(test)] mod tests { … }` or `use`) is not an import of the module.
            Token::Punct('#') if tokens[i..].starts_with(&cfg_test()) => {
                let item = i + cfg_test().len();
                match (tokens.get(item), tokens.get(item + 2)) {
                    (Some(Token::Ident(kw)), Some(Token::Punct('{'))) if kw == "mod" => {
                        let mut open = 0;
                        i = item + 2;
                        while i < tokens.len() {
                            match tokens[i] {
                                Token::Punct('{') => open += 1,
                                Token::Punct('}') => open -= 1,
                                _ => {}
                            }
                            i += 1;
                            if open == 0 {
                                break;
                            }
                        }
                        continue;
                    }
                    (Some(Token::Ident(kw)), _) if kw == "use" => {
                        while i < tokens.len() && tokens[i] != Token::Punct(';') {
                            i += 1;
                        }
                    }
                    _ => {}
                }
            }
            Token::Ident(root)
                if !after_sep
                    && matches!(root.as_str(), "crate" | "super" | "self")
                    && tokens.get(i + 1) == Some(&Token::PathSep) =>
            {
                let mut base: Vec<String> = module.to_vec();
                base.extend(inline.iter().map(|(m, _)| m.clone()));
                let mut j = i;
                match root.as_str() {
                    "crate" => {
                        base.clear();
                        j += 2;
                    }
                    "self" => j += 2,
                    _ => {
                        while tokens.get(j) == Some(&Token::Ident("super".into()))
                            && tokens.get(j + 1) == Some(&Token::PathSep)
                        {
                            base.pop();
                            j += 2;
                        }
                    }
                }
                let (tree, end) = path_tree(&tokens, j, base);
                paths.extend(tree);
                i = end;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    paths
}

/// `#[cfg(test)]`
fn cfg_test() -> Vec<Token> {
    let p = Token::Punct;
    let id = |s: &str| Token::Ident(s.into());
    vec![p('#'), p('['), id("cfg"), p('('), id("test"), p(')'), p(']')]
}

/// The paths of a (possibly grouped) path starting at `tokens[i]`, under `prefix`, and where it ends.
fn path_tree(tokens: &[Token], mut i: usize, mut prefix: Vec<String>) -> (Vec<Vec<String>>, usize) {
    loop {
        match tokens.get(i) {
            Some(Token::Ident(segment)) => {
                if segment != "self" {
                    prefix.push(segment.clone());
                }
                i += 1;
                if tokens.get(i) == Some(&Token::PathSep) {
                    i += 1;
                } else {
                    return (vec![prefix], i);
                }
            }
            Some(Token::Punct('{')) => {
                let mut all = Vec::new();
                i += 1;
                loop {
                    match tokens.get(i) {
                        Some(Token::Punct('}')) => return (all, i + 1),
                        Some(Token::Punct(',')) => i += 1,
                        None => return (all, i),
                        Some(_) => {
                            let (sub, end) = path_tree(tokens, i, prefix.clone());
                            all.extend(sub);
                            // `x as y`: skip to the next separator.
                            i = end;
                            while let Some(t) = tokens.get(i) {
                                if matches!(t, Token::Punct(',' | '}')) {
                                    break;
                                }
                                i += 1;
                            }
                        }
                    }
                }
            }
            // `crate::*` or the end of a path.
            _ => return (vec![prefix], i),
        }
    }
}

/// One cycle per strongly connected component of more than one file, each as a closed walk.
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    let mut done: BTreeSet<&String> = BTreeSet::new();
    for start in graph.keys() {
        if done.contains(start) {
            continue;
        }
        // The component of `start`: nodes reachable from it that also reach it.
        let reach = |from: &String| -> BTreeSet<&String> {
            let mut seen = BTreeSet::new();
            let mut stack = vec![from];
            while let Some(n) = stack.pop() {
                for m in graph.get(n).into_iter().flatten() {
                    if seen.insert(m) {
                        stack.push(m);
                    }
                }
            }
            seen
        };
        let component: BTreeSet<&String> =
            reach(start).into_iter().filter(|n| reach(n).contains(start)).chain(std::iter::once(start)).collect();
        done.extend(component.iter().copied());
        if component.len() < 2 {
            continue;
        }
        // A shortest way back to `start` inside the component (breadth first).
        let mut previous: BTreeMap<&String, &String> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        'search: while let Some(n) = queue.pop_front() {
            for m in &graph[n] {
                if !component.contains(m) {
                    continue;
                }
                if m == start {
                    let mut walk = vec![start.clone()];
                    let mut at = n;
                    while at != start {
                        walk.push(at.clone());
                        at = previous[at];
                    }
                    walk.push(start.clone());
                    walk.reverse();
                    if component.len() > walk.len() - 1 {
                        // The whole circle, file by file: what each imports inside it.
                        for file in &component {
                            let inside: Vec<&str> =
                                graph[*file].iter().filter(|m| component.contains(m)).map(String::as_str).collect();
                            walk.push(format!("\n      {file} imports {}", inside.join(", ")));
                        }
                    }
                    found.push(walk);
                    break 'search;
                }
                if !previous.contains_key(m) {
                    previous.insert(m, n);
                    queue.push_back(m);
                }
            }
        }
    }
    found
}
