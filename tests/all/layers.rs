//! The layers call only downward: a file of `src/` names (`crate::…`) only
//! modules of its own layer or below, and the pure policies know neither
//! the driver nor the commit layer (nor the other way round). Read from the
//! source text, as a reviewer would check it.

use std::path::Path;

/// Layer of a top-level module of the crate (higher calls lower).
fn layer(module: &str) -> Option<u32> {
    Some(match module {
        "ptr" | "align" | "error" | "meta" | "lock" => 0,
        "driver" => 1,
        "sync" => 2,
        "commit" | "policy" => 3,
        "arena" | "stats" => 4,
        "global" => 5,
        "api" | "replay" => 6,
        _ => return None,
    })
}

/// The module that defines a name the crate root re-exports.
fn root_name(name: &str) -> &str {
    match name {
        "Result" | "Error" | "ErrorKind" | "BadPointer" | "OomReport" | "OomBox"
        | "DriverError" | "DriverBox" | "Backend" | "Call" | "Reason" => "error",
        "DevicePtr" => "ptr",
        "Stream" => "driver",
        "Arena" | "ArenaConfig" | "Kind" | "SleepMode" | "SleepReport" | "Accounting" => "arena",
        "CommitConfig" => "commit",
        "Policy" => "policy",
        "Stats" | "Snapshot" => "stats",
        "GlobalArena" | "GlobalConfig" => "global",
        _ => "api",
    }
}

/// Pairs that must never import each other, whatever their layers.
const APART: [(&str, &str); 3] = [
    ("policy", "driver"),
    ("policy", "commit"),
    ("commit", "policy"),
];

/// The first path segment of each name after `crate::` (a group
/// `crate::{a::X, B}` names several).
fn names(rest: &str) -> Vec<String> {
    let word = |s: &str| -> String {
        s.trim()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    match rest.strip_prefix('{') {
        Some(group) => group
            .split('}')
            .next()
            .unwrap_or("")
            .split(',')
            .map(word)
            .filter(|w| !w.is_empty())
            .collect(),
        None => vec![word(rest)],
    }
}

fn visit(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            visit(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn no_module_imports_a_higher_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    visit(&src, &mut files);
    let mut wrong = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap();
        let own = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_str()
            .unwrap()
            .trim_end_matches(".rs");
        let Some(own_layer) = layer(own) else {
            continue; // lib.rs (re-exports), bin/
        };
        let text = std::fs::read_to_string(f).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap();
            for (i, _) in code.match_indices("crate::") {
                let rest = &code[i + "crate::".len()..];
                for name in names(rest) {
                    let target = if layer(&name).is_some() {
                        name.as_str()
                    } else {
                        root_name(&name)
                    };
                    let t = layer(target).unwrap();
                    let apart = APART.contains(&(own, target));
                    if (t > own_layer || apart) && target != own {
                        wrong.push(format!(
                            "{}:{}: {own} -> {target} ({})",
                            rel.display(),
                            n + 1,
                            line.trim()
                        ));
                    }
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports that run up or across:\n{}",
        wrong.join("\n")
    );
}
