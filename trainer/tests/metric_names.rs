//! Metric names are named once, in `trainer::metric_names`: no string literal such as
//! `"eval/kl_init"` in the trainer's or the server's code outside it. Test modules (from a file's
//! `#[cfg(test)]` on) and comments are left out; so are bare names like `"loss"`, which cannot be
//! told from config keys by their text (they have constants too: `metric_names::LOSS`, …).

use std::path::{Path, PathBuf};

use trainer::metric_names::PREFIXES;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `"prefix/name` occurrences in the code (not comments) of `text` before its test module.
fn metric_literals(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("#[cfg(test)]") {
            break;
        }
        let code = line.split("//").next().unwrap_or("");
        for (at, _) in code.match_indices('"') {
            let rest = &code[at + 1..];
            for prefix in PREFIXES {
                if rest
                    .strip_prefix(prefix)
                    .and_then(|r| r.chars().next())
                    .is_some_and(|c| c.is_alphanumeric() || c == '_')
                {
                    let end = rest.find('"').unwrap_or(rest.len());
                    found.push((i + 1, rest[..end].to_string()));
                }
            }
        }
    }
    found
}

#[test]
fn every_metric_name_literal_lives_in_metric_names() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for dir in ["trainer/src", "server/src"] {
        rust_files(&root.join(dir), &mut files);
    }
    assert!(files.len() > 50, "found only {} source files under {}", files.len(), root.display());
    let mut offenders = Vec::new();
    for file in files.iter().filter(|f| !f.ends_with("trainer/src/metric_names.rs")) {
        let text = std::fs::read_to_string(file).unwrap();
        for (line, name) in metric_literals(&text) {
            offenders.push(format!("{}:{line}: \"{name}\"", file.strip_prefix(&root).unwrap_or(file).display()));
        }
    }
    assert!(
        offenders.is_empty(),
        "metric names written as literals (use trainer::metric_names):\n{}",
        offenders.join("\n")
    );
}

#[test]
fn the_scan_finds_literals_and_skips_comments_formats_and_tests() {
    let text = "let a = m.get(\"eval/kl_init\");\n// \"eval/gold_reward\" in a comment\nlet b = format!(\"eval/{name}\");\nlet c = \"sft/loss\";\n#[cfg(test)]\nlet d = \"rewards/chosen\";\n";
    assert_eq!(metric_literals(text), vec![(1, "eval/kl_init".to_string()), (4, "sft/loss".to_string())]);
}
