//! The `gpu-arena` binary end to end: each subcommand runs, exits 0 and
//! prints what it should. No assertion on time.

use std::path::PathBuf;
use std::process::{Command, Output};

/// Whether the CLI binary is here (packed test binaries run elsewhere).
fn have_bin() -> bool {
    let here = std::path::Path::new(env!("CARGO_BIN_EXE_gpu-arena")).exists();
    if !here {
        println!("skipped: the gpu-arena binary is not at its build path (packed test run)");
    }
    here
}

fn run(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_gpu-arena"))
        .args(args)
        .output()
        .expect("the gpu-arena binary runs");
    assert!(
        out.status.success(),
        "gpu-arena {args:?} failed: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `bench --quick --json` on the host backend for the sections `only`,
/// with `extra` arguments, parsed.
fn bench_json_of(only: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "bench",
        "--quick",
        "--json",
        "--backend",
        "host",
        "--only",
        only,
    ];
    args.extend_from_slice(extra);
    serde_json::from_slice(&run(&args).stdout).expect("bench --json is JSON")
}

/// A shared trace, beside the repository (`../shared`) or its worktree
/// (`../../shared`).
fn trace(name: &str) -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    ["../shared/traces", "../../shared/traces"]
        .iter()
        .map(|d| root.join(d).join(name))
        .find(|p| p.exists())
}

#[test]
fn info() {
    if !have_bin() {
        return;
    }
    let out = run(&["info", "--backend", "host"]);
    let s = stdout(&out);
    for heading in [
        "backend",
        "granularity",
        "device memory",
        "reservation",
        "config.commit.max_run",
    ] {
        assert!(s.contains(heading), "info lacks {heading:?}:\n{s}");
    }
    // The stitched ranges' settings, as in effect (the defaults here).
    for (key, value) in [
        ("config.commit.range_order", "made"),
        ("config.commit.stitch_repair", "false"),
        ("config.commit.park", "true"),
    ] {
        assert!(
            s.lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == [key, value]),
            "info lacks {key} {value}:\n{s}"
        );
    }
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("host backend"),
        "the backend line goes to stderr"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&run(&["info", "--json", "--backend", "host"]).stdout)
            .expect("info --json is JSON");
    assert_eq!(json["capabilities"]["backend"], "host");
    assert!(json["reservation"]["size"].as_u64().unwrap_or(0) > 0);
    assert!(json["config"]["commit"]["max_run"].as_u64().is_some());
    // Every device is listed: the host backend opened for device 3
    // emulates devices 0..=3.
    let json: serde_json::Value = serde_json::from_slice(
        &run(&["info", "--json", "--backend", "host", "--device", "3"]).stdout,
    )
    .expect("info --json is JSON");
    let devices = json["devices"].as_array().expect("a device list");
    assert_eq!(devices.len(), 4);
    for (i, d) in devices.iter().enumerate() {
        assert_eq!(d["ordinal"], i as u64);
        assert_eq!(d["vmm"], true);
        assert!(d["granularity"].as_u64().unwrap_or(0) > 0);
    }
    let s = stdout(&run(&["info", "--backend", "host", "--device", "3"]));
    assert!(s.contains("  device 3 "), "{s}");
}

#[test]
fn bench_quick() {
    if !have_bin() {
        return;
    }
    let s = stdout(&run(&["bench", "--quick", "--backend", "host"]));
    for heading in [
        "a. alloc+free pair latency",
        "b. thread scaling",
        "c. commit bandwidth",
        "d. free while a",
        "e. growth",
        "f. scratch arena vs bumpalo",
        "System malloc",
        "reference",
        "bumpalo::Bump",
        "target",
        "ratio",
    ] {
        assert!(s.contains(heading), "bench output lacks {heading:?}:\n{s}");
    }
}

#[test]
fn bench_markdown_keeps_reference_figures_apart() {
    if !have_bin() {
        return;
    }
    let s = stdout(&run(&[
        "bench",
        "--quick",
        "--markdown",
        "--backend",
        "host",
        "--only",
        "pairs,threads",
    ]));
    assert!(s.contains("#### a. alloc+free pair latency"), "{s}");
    assert!(s.contains("#### b. thread scaling"), "{s}");
    assert!(
        s.contains("| case | gpu-arena | System malloc | ratio | target | check |"),
        "{s}"
    );
    // The measured tables hold measured columns only; the fixed figures
    // follow under their own label, in a table without ratios.
    let (measured, refs) = s
        .split_once("reference figures, not measured in this run")
        .expect("a labelled reference table");
    assert!(!measured.contains("PyTorch"), "{measured}");
    assert!(
        refs.contains("| case | cudaMallocAsync | PyTorch |"),
        "{refs}"
    );
    let table = refs.lines().filter(|l| l.starts_with('|'));
    assert!(table.clone().all(|l| !l.contains("ratio")), "{refs}");
    assert_eq!(table.count(), 5, "header, rule, 1/4/16 threads: {refs}");
}

#[test]
fn bench_json() {
    if !have_bin() {
        return;
    }
    let json = bench_json_of("pairs,kernel", &[]);
    let sections = json["sections"].as_array().expect("sections");
    assert_eq!(sections.len(), 2);
    assert_eq!(sections[0]["id"], "pairs");
    let rows = sections[0]["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 4, "one row per size");
    assert!(
        rows.iter()
            .all(|r| r["arena"].as_f64().is_some_and(|v| v > 0.0))
    );
    assert_eq!(
        sections[1]["rows"][0]["arena"],
        serde_json::Value::Null,
        "kernel: n/a on host"
    );
    let json = bench_json_of("threads", &[]);
    let threads = &json["sections"][0];
    let anchors = threads["anchors"].as_array().expect("anchors");
    assert!(
        anchors.iter().all(|a| a["name"] != "PyTorch"),
        "reference figures are no anchor column: {anchors:?}"
    );
    assert_eq!(threads["references"]["columns"][1], "PyTorch");
    assert!(
        threads["rows"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| { r["ratios"].as_array().unwrap().len() == anchors.len() })
    );
}

#[test]
fn replay() {
    if !have_bin() {
        return;
    }
    let Some(t) = trace("bert_infer.trace.jsonl.gz") else {
        println!("skipped: shared/traces/bert_infer.trace.jsonl.gz not found");
        return;
    };
    let t = t.to_string_lossy().into_owned();
    let s = stdout(&run(&["replay", &t]));
    for heading in [
        "bert_infer",
        "peak live",
        "peak committed",
        "ratio",
        "PyTorch default",
        "3.436",
        "driver calls",
    ] {
        assert!(s.contains(heading), "replay output lacks {heading:?}:\n{s}");
    }
    let json: serde_json::Value =
        serde_json::from_slice(&run(&["replay", "--json", &t]).stdout).expect("JSON");
    let r = &json[0]["result"];
    assert_eq!(r["events"], 96802);
    assert!(r["ratio"].as_f64().is_some_and(|x| x >= 1.0));
}

#[test]
fn map() {
    if !have_bin() {
        return;
    }
    let dir = std::env::temp_dir();
    let svg = dir.join(format!("gpu-arena-cli-{}.svg", std::process::id()));
    let p = svg.to_string_lossy().into_owned();
    run(&["map", "-o", &p]);
    let s = std::fs::read_to_string(&svg).expect("map wrote its file");
    std::fs::remove_file(&svg).ok();
    assert!(
        s.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""),
        "SVG root: {}",
        &s[..s.len().min(200)]
    );
    assert!(s.trim_end().ends_with("</svg>"));
    assert!(s.contains("region blocks") && s.contains("slab") && s.contains("grow"));

    let Some(t) = trace("bert_infer.trace.jsonl.gz") else {
        println!("skipped map --trace: shared/traces/bert_infer.trace.jsonl.gz not found");
        return;
    };
    let html = dir.join(format!("gpu-arena-cli-{}.html", std::process::id()));
    let h = html.to_string_lossy().into_owned();
    run(&["map", "--trace", &t.to_string_lossy(), "--html", "-o", &h]);
    let s = std::fs::read_to_string(&html).expect("map wrote its file");
    std::fs::remove_file(&html).ok();
    assert!(s.starts_with("<!DOCTYPE html>") && s.contains("<svg ") && s.contains("</html>"));
    assert!(
        s.contains("<polyline"),
        "the chart of committed and live bytes"
    );
}

#[test]
fn bad_input_fails_cleanly() {
    if !have_bin() {
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_gpu-arena"))
        .args(["replay", "/nonexistent/trace.jsonl.gz"])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot read /nonexistent/trace.jsonl.gz"),
        "{err}"
    );
}

#[test]
fn soak_runs_checks_and_reports() {
    if !have_bin() {
        return;
    }
    let Some(t) = trace("gpt2_generate.trace.jsonl.gz") else {
        println!("skipped: shared/traces/gpt2_generate.trace.jsonl.gz not found");
        return;
    };
    let json = std::env::temp_dir().join(format!("gpu-arena-soak-{}.json", std::process::id()));
    let j = json.to_string_lossy().into_owned();
    let s = stdout(&run(&[
        "soak",
        "--backend",
        "host",
        "--seconds",
        "3",
        "--threads",
        "4",
        "--limit",
        "128MiB",
        "--fault-every",
        "16",
        "--traces",
        &t.to_string_lossy(),
        "--json-out",
        &j,
    ]));
    for heading in [
        "4 threads x 4 streams",
        "on another stream (after an event)",
        "by another thread",
        "errors by kind",
        "driver calls (checked layer)",
        "faults injected",
        "most committed at once",
        "result: PASSED",
    ] {
        assert!(s.contains(heading), "soak output lacks {heading:?}:\n{s}");
    }
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("--json-out wrote"))
            .expect("JSON");
    std::fs::remove_file(&json).ok();
    assert_eq!(r["failures"].as_array().map(Vec::len), Some(0), "{r}");
    assert!(r["tally"]["allocs"].as_u64().is_some_and(|n| n > 0), "{r}");
    assert_eq!(r["tally"]["allocs"], r["tally"]["frees"], "{r}");
    assert_eq!(r["driver"]["create"], r["driver"]["release"], "{r}");
    assert_eq!(
        r["driver"]["bytes_mapped"], r["driver"]["bytes_unmapped"],
        "{r}"
    );
    assert_eq!(
        r["driver"]["reserve"], r["driver"]["free_reservation"],
        "{r}"
    );
    assert!(r["peak_committed"].as_u64() <= r["limit"].as_u64(), "{r}");
    assert_eq!(r["corrupted_words"], 0);
}

#[test]
fn soak_without_traces_fails_cleanly() {
    if !have_bin() {
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_gpu-arena"))
        .args([
            "soak",
            "--backend",
            "host",
            "--traces",
            "/nonexistent/trace.jsonl.gz",
        ])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot read /nonexistent/trace.jsonl.gz"),
        "{err}"
    );
}

#[test]
fn pressure_runs_its_protocol_on_the_host() {
    if !have_bin() {
        return;
    }
    let s = stdout(&run(&[
        "pressure",
        "--backend",
        "host",
        "--rounds",
        "2",
        "--hold-ms",
        "10",
        "--weights",
        "8MiB",
        "--kv-cache",
        "8MiB",
        "--idle",
        "8MiB",
        "--compute",
        "1MiB",
    ]));
    for line in [
        "round 1:",
        "round 2:",
        "A gave back: kv_cache discarded 8 MiB",
        "weights offloaded 8 MiB",
        "weights: 0 words differ; cache recomputed: 0 words differ",
        "0 words differ from the launch count",
        "result: PASSED",
    ] {
        assert!(s.contains(line), "pressure output lacks {line:?}:\n{s}");
    }
}

/// `bench --torch-anchor` loads a library with the entry points of
/// `scripts/torch_anchor.cpp` and measures it as an anchor column of
/// sections a and b, in the same run (here the stand-in over `malloc`,
/// `tests/c/torch_anchor_standin.c`: no torch on this machine); a path that
/// is no such library is refused with what to do.
#[test]
fn bench_torch_anchor_column() {
    if !have_bin() {
        return;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let src = root.join("tests/c/torch_anchor_standin.c");
    let lib = std::env::temp_dir().join(format!("torch_anchor_standin_{}.so", std::process::id()));
    let have_cc = Command::new(&cc)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_cc || !src.exists() {
        println!("skipped: needs a C compiler and the source tree (not on a packed test machine)");
        return;
    }
    let built = Command::new(&cc)
        .args([
            "-shared", "-fPIC", "-std=c11", "-Wall", "-Wextra", "-Werror", "-o",
        ])
        .arg(&lib)
        .arg(&src)
        .status()
        .expect("the C compiler runs");
    assert!(built.success(), "compiling the stand-in failed");
    let lib_arg = lib.to_string_lossy().into_owned();
    let json = bench_json_of("pairs,threads", &["--torch-anchor", &lib_arg]);
    let sections = json["sections"].as_array().expect("sections");
    assert_eq!(sections.len(), 2, "pairs and threads");
    for section in sections {
        let anchors = section["anchors"].as_array().expect("anchors");
        let col = anchors
            .iter()
            .position(|a| a["name"] == "stand-in (malloc)")
            .unwrap_or_else(|| panic!("no column for the loaded library: {anchors:?}"));
        for r in section["rows"].as_array().expect("rows") {
            assert!(
                r["anchors"][col].as_f64().is_some_and(|v| v > 0.0),
                "the library's figure is measured: {r}"
            );
            assert!(
                r["ratios"][col].as_f64().is_some_and(|v| v > 0.0),
                "and enters the ratio: {r}"
            );
        }
        let notes = section["notes"].as_array().expect("notes");
        assert!(
            notes
                .iter()
                .any(|n| n.as_str().is_some_and(|n| n.contains(&lib_arg))),
            "a note names the library: {notes:?}"
        );
    }
    let _ = std::fs::remove_file(&lib);
    let missing = Command::new(env!("CARGO_BIN_EXE_gpu-arena"))
        .args(["bench", "--quick", "--backend", "host", "--only", "pairs"])
        .arg("--torch-anchor")
        .arg(root.join("Cargo.toml"))
        .output()
        .expect("the gpu-arena binary runs");
    assert!(
        !missing.status.success(),
        "a file that is no library is refused"
    );
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.contains("--torch-anchor") && err.contains("scripts/torch_anchor.cpp"),
        "the error says what to do: {err}"
    );
}
