#!/usr/bin/env python3
"""Markdown tables for docs/multi-gpu.md from the logs of one run of
scripts/multi_gpu_session.sh, so no figure is typed by hand.

usage: multi_gpu_report.py OUT_DIR [--write FILE] [--doc docs/multi-gpu.md] [--raw]
       multi_gpu_report.py --self-test

OUT_DIR holds what the session wrote: inventory.txt, tests.log, nccl.log,
nccl.jsonl, ddp.log, ddp.jsonl, steps.txt. Missing files give "not run"
sections, never an error. --doc replaces the text between the
`<!-- multi-gpu-results:begin -->` and `<!-- multi-gpu-results:end -->`
markers of that file, raw logs included (collapsed blocks, head and tail of
long ones); --write writes the Markdown to FILE (--raw adds the logs);
otherwise it is printed. --self-test runs the report on a small made-up log and checks it
(CI runs that; its figures mean nothing).
"""

import json
import os
import re
import statistics
import sys
import tempfile

BEGIN = "<!-- multi-gpu-results:begin -->"
END = "<!-- multi-gpu-results:end -->"
MiB = 1 << 20


def read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return None


def jsonl(path):
    text = read(path)
    rows = []
    for line in (text or "").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass
    return rows


def kv(text):
    """key=value fields of a log line (values end at a space)."""
    return dict(re.findall(r"(\w+)=(\S+)", text))


def num(x, fmt="{:.1f}"):
    try:
        return fmt.format(float(x))
    except (TypeError, ValueError):
        return "-"


def yn(x):
    """yes / NO for booleans, the value itself otherwise."""
    if x is True:
        return "yes"
    if x is False:
        return "NO"
    return "-" if x is None else x


def table(headers, rows):
    out = ["| " + " | ".join(headers) + " |",
           "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def tagged(text, tag):
    """Fields of every line holding `tag ` (a line may start with the test
    harness's `test name ... ` first)."""
    found = []
    for line in (text or "").splitlines():
        i = line.find(tag + " ")
        if i >= 0 and (i == 0 or line[i - 1] == " "):
            rest = line[i + len(tag) + 1:]
            f = kv(rest)
            if "skipped" in rest and "=" not in rest.split("skipped")[1][:1]:
                f["skipped"] = rest[rest.find("skipped"):]
            found.append(f)
    return found


def test_outcomes(text):
    """(name, outcome, note) of every `test NAME ... ` in a libtest log run
    with --nocapture: the outcome is the next line that is ok / FAILED /
    ignored (or ends the same line); a `skipped:` line is the note."""
    out = []
    parts = re.split(r"(?m)^(?:.*?)test (\S+) \.\.\. ", text or "")
    for name, body in zip(parts[1::2], parts[2::2]):
        outcome, note = "no outcome (crashed or timed out?)", ""
        for line in body.splitlines():
            s = line.strip()
            if s.startswith("skipped:") and not note:
                note = s
            if s in ("ok", "FAILED", "ignored") or s.endswith((" ok", " FAILED")):
                outcome = s.split()[-1]
                break
            if s.startswith("test result:") or s.startswith("=== END"):
                break
        if note and outcome == "ok":
            outcome = "skipped"
        out.append((name, outcome, note))
    return out


def section_machine(out_dir):
    inv = read(os.path.join(out_dir, "inventory.txt"))
    steps = read(os.path.join(out_dir, "steps.txt"))
    md = ["### The run", ""]
    if inv is None:
        md += ["Not run: no `inventory.txt`.", ""]
    else:
        gpus = re.findall(r"(?m)^GPU (\d+): (.+?) \(UUID", inv)
        csv = re.findall(r"(?m)^\d+, .+$", inv)
        driver = csv[0].split(", ")[3] if csv else "-"
        torch_line = tagged(inv, "PYTHON_TORCH")
        t = torch_line[0] if torch_line else {}
        md.append(f"{len(gpus)} GPUs: " + "; ".join(f"{i}: {n}" for i, n in gpus) +
                  f". Driver {driver}; torch {t.get('torch', '-')} (CUDA {t.get('cuda', '-')}), "
                  f"NCCL {t.get('nccl', '-')}.")
        topo = re.search(r"(?ms)^\s*GPU0\s+GPU1.*?(?=^\s*$|^Legend)", inv)
        if topo:
            md += ["", "```text", topo.group(0).rstrip(), "```"]
        info = re.search(r"(?m)^INFO_JSON (.+)$", inv)
        if info:
            try:
                devs = json.loads(info.group(1)).get("devices", [])
                md += ["", "`gpu-arena info`:", ""]
                md.append(table(
                    ["device", "name", "memory GiB", "granularity", "VMM", "shareable", "peers"],
                    [[d["ordinal"], d["name"],
                      num((d.get("memory") or 0) / 2**30),
                      f"{(d.get('granularity') or 0) >> 20} MiB" if d.get("granularity") else "-",
                      "yes" if d.get("vmm") else f"no ({d.get('error')})",
                      "yes" if d.get("shareable_handles") else "no",
                      ",".join(map(str, d["peers"])) if d.get("peers") is not None else "-"]
                     for d in devs]))
            except ValueError:
                md.append("(`gpu-arena info --json` did not parse)")
    md.append("")
    if steps:
        rows = [[f["name"], f.get("rc", "-"), f.get("seconds", "-"), f.get("limit", "-")]
                for f in ({"name": ln.split()[1], **kv(ln)}
                          for ln in steps.splitlines() if ln.startswith("STEP "))]
        total = re.search(r"TOTAL seconds=(\d+)", steps)
        md += [table(["step", "exit", "seconds", "limit"], rows), "",
               f"Total before the report: {total.group(1) if total else '-'} s.", ""]
    return md


def section_tests(out_dir):
    log = read(os.path.join(out_dir, "tests.log"))
    md = ["### Tests on the GPUs (`tests/all` peer_ipc, `tests/ipc_two_process`)", ""]
    if log is None:
        return md + ["Not run: no `tests.log`.", ""]
    outcomes = test_outcomes(log)
    md.append(table(["test", "result", "note"],
                    [[f"`{n}`", o, note] for n, o, note in outcomes]))
    md.append("")
    grants = tagged(log, "PEER")
    kernel = [f for f in grants if f.get("peer") and f.get("target")]
    if kernel:
        g = {f["peer"]: f for f in grants if "committed_bytes" in f}
        r = {f["peer"]: f for f in grants if "access_after" in f}
        md += ["Peer access to device 0's arena (a kernel of each peer's own context adds one "
               "to 40 MiB of device-0 memory committed before and after the grant):", ""]
        md.append(table(
            ["peer", "grant µs (committed MiB)", "access after grant", "kernel target",
             "kernel µs", "access after revoke", "page committed after revoke"],
            [[f["peer"],
              f"{num(g.get(f['peer'], {}).get('us'))} ({num(int(g.get(f['peer'], {}).get('committed_bytes', 0)) / MiB, '{:.0f}')})",
              g.get(f["peer"], {}).get("access", "-"), f["target"], num(f.get("us")),
              r.get(f["peer"], {}).get("access_after", "-"),
              r.get(f["peer"], {}).get("later_commit_access", "-")] for f in kernel]))
        res = [f for f in grants if "committed_before_grant" in f]
        if res:
            f = res[0]
            md += ["", f"Values read back on device 0 after {f.get('peers')} peer kernels: "
                       f"memory committed before the grant {f['committed_before_grant']}, after "
                       f"it {f['committed_after_grant']}, growable buffer committed after it "
                       f"{f['buffer_after_grant']}."]
        md.append("")
    ipc1 = [f for f in grants if "importer_read" in f]
    for f in ipc1:
        md += [f"One process, buffer of device {f['exporter_device']} imported on device "
               f"{f['importer_device']}: access {f['importer_access']}, read {f['importer_read']}, "
               f"kernel write seen by the exporter {f['exporter_sees_kernel_write']}, after the "
               f"exporter's release {f['after_exporter_release']}.", ""]
    cost = tagged(log, "PEER_COST")
    ratio = tagged(log, "PEER_COST_RATIO")
    if cost:
        md += ["Allocation cost with a peer granted (medians of 3 alternating rounds, same run):",
               ""]
        md.append(table(
            ["backend", "peer granted", "alloc+free 256 B ns", "alloc+free+trim 64 MiB µs",
             "driver calls / 64 MiB", "set_access / 64 MiB"],
            [[f.get("backend"), f.get("peer_granted"), num(f.get("alloc_free_256B_ns")),
              num(f.get("alloc_free_trim_64MiB_us")), num(f.get("driver_calls_per_64MiB")),
              num(f.get("set_access_per_64MiB"))] for f in cost]))
        md += [""] + [f"Ratio granted / not granted ({f.get('backend')}): hot path "
                      f"{f.get('alloc_free_256B')}, commit path {f.get('alloc_free_trim_64MiB')}."
                      for f in ratio] + [""]
    commit = tagged(log, "PEER_COMMIT")
    if commit:
        base = {}
        rows = []
        for f in commit:
            if "skipped" in f:
                rows.append([f.get("backend"), f.get("peers"), f["skipped"], "", "", ""])
                continue
            if f.get("peers") == "0":
                # The run's own 0-peer line (lines come in order 0, 1, 3).
                base[f.get("backend")] = f
            b = base.get(f.get("backend"), {})
            rel = (float(f["set_access_64MiB_us"]) / float(b["set_access_64MiB_us"])
                   if b.get("set_access_64MiB_us") else float("nan"))
            rows.append([f.get("backend"), f.get("peers"), num(f.get("alloc_free_trim_64MiB_us")),
                         num(f.get("alloc_free_trim_2MiB_us")), num(f.get("set_access_64MiB_us")),
                         num(rel, "{:.2f}")])
        md += ["Commit cost with peers (medians of 3 alternating rounds):", ""]
        md.append(table(["backend", "peers", "alloc+free+trim 64 MiB µs",
                         "alloc+free+trim 2 MiB µs", "set_access 64 MiB µs",
                         "set_access vs 0 peers"], rows))
        md.append("")
    ipc = tagged(log, "IPC")
    if ipc:
        md += ["Two processes (`tests/ipc_two_process`):", ""]
        md.append(table(
            ["run", "exporter device", "importer device", "bytes", "runs", "importer reads",
             "exporter sees answer", "after exporter free/trim/sleep", "intruder"],
            [[f.get("test"), f.get("exporter_device"), f.get("importer_device"), f.get("bytes"),
              f.get("runs"), f.get("pattern"), f.get("answer_seen_by_exporter"),
              f.get("after_exporter_free_trim_sleep"), f.get("intruder")] for f in ipc]))
        md.append("")
    summaries = re.findall(r"(?m)^test result: .+$", log)
    if summaries:
        md += ["```text"] + summaries + ["```", ""]
    return md


def section_nccl(out_dir):
    rows = jsonl(os.path.join(out_dir, "nccl.jsonl"))
    md = ["### NCCL all-reduce (`scripts/nccl_allreduce.py`)", ""]
    if not rows:
        return md + ["Not run: no `nccl.jsonl`.", ""]
    for setup in (r for r in rows if r.get("phase") == "setup"):
        md.append(f"World {setup['world']}: torch {setup.get('torch')}, NCCL {setup.get('nccl')}, "
                  f"{setup.get('gpu')}.")
    md.append("")
    worlds = sorted({r["world"] for r in rows if "world" in r})
    for w in worlds:
        by = {(r["allocator"], r["bytes"]): r for r in rows
              if r.get("world") == w and "busbw_GBps" in r and "probe" not in r}
        sizes_ = sorted({b for _, b in by})
        if not sizes_:
            continue
        out, ratios, correct = [], [], True
        for b in sizes_:
            d, g = by.get(("default", b)), by.get(("gpu-arena", b))
            ratio = g["busbw_GBps"] / d["busbw_GBps"] if d and g else None
            if ratio is not None:
                ratios.append(ratio)
            ok = bool(d and g and d["ok"] and g["ok"])
            correct &= ok
            size = f"{b // MiB} MiB" if b < 1024 * MiB else f"{b // (1024 * MiB)} GiB"
            out.append([size, num(d and d["busbw_GBps"]), num(g and g["busbw_GBps"]),
                        num(ratio, "{:.3f}"), "yes" if ok else "NO"])
        md += [f"World {w} (bus bandwidth, median of the trials, slowest rank):", ""]
        md.append(table(["size", "default GB/s", "gpu-arena GB/s", "ratio", "exact sums"], out))
        if ratios:
            md += ["", f"Lowest ratio {min(ratios):.3f}; ≥ 0.98 at every size: "
                       f"{'yes' if min(ratios) >= 0.98 and len(ratios) == len(sizes_) else 'NO'}; "
                       f"exact sums everywhere: {'yes' if correct else 'NO'}."]
        peaks = [r for r in rows if r.get("world") == w and "arena_peaks" in r]
        if peaks:
            md += ["", "gpu-arena per rank: " + "; ".join(
                f"rank {p['rank']} peak live {p['peak_live'] / MiB:.0f} MiB, peak committed "
                f"{p['peak_committed'] / MiB:.0f} MiB" for p in peaks[-1]["arena_peaks"]) + "."]
        status = [r for r in rows if r.get("world") == w and "status" in r]
        if status:
            md += ["", "Phases: " + ", ".join(f"{r['phase']} {r['status']}" for r in status) + "."]
        errors = [r for r in rows if r.get("world") == w and "error" in r and "probe" not in r]
        for e in errors:
            md += ["", f"Error in phase {e.get('phase')}: `{e['error']}`"]
        md.append("")
    probes = [r for r in rows if "probe" in r]
    reg = [r for r in probes if r["probe"] == "register_mem_pool"]
    if reg:
        md += ["NCCL user-buffer registration (`register_mem_pool`: `ncclCommRegister` on each "
               "segment of a memory pool), world " + str(reg[0]["world"]) + ":", ""]
        md.append(table(
            ["pool segments from", "size", "registered", "on all ranks", "exact sums after",
             "busbw unregistered", "busbw registered", "gain"],
            [[r.get("pool"), f"{r.get('bytes', 0) // MiB} MiB", r.get("registered", r.get("error")),
              yn(r.get("registered_on_all_ranks")), yn(r.get("correct_after")),
              num(r.get("busbw_unregistered_GBps")), num(r.get("busbw_registered_GBps")),
              num(r.get("gain"), "{:.3f}")] for r in reg]))
        md.append("")
    for r in (r for r in probes if r["probe"] == "ncclCommRegister"):
        md += [f"`ncclCommRegister` of one 64 MiB gpu-arena tensor inside a segment: "
               f"{r.get('result', r.get('error'))} (rc {r.get('rc', '-')}), exact sums after: "
               f"{yn(r.get('correct_after'))}, deregister rc {r.get('deregister_rc', '-')}.", ""]
    sw = [r for r in probes if r["probe"] == "sleep_wake"]
    if sw:
        md += ["Sleep and wake of a gpu-arena tag holding NCCL-registered memory (64 MiB):", ""]
        md.append(table(
            ["order", "sleep / wake rc", "sleep ms", "wake ms", "completed", "exact sums after",
             "note"],
            [[r.get("order", "-"), f"{r.get('sleep_rc', '-')} / {r.get('wake_rc', '-')}",
              num(r.get("sleep_ms"), "{:.2f}"), num(r.get("wake_ms"), "{:.2f}"),
              yn(r.get("completed")), yn(r.get("correct_after")),
              r.get("hang") or r.get("error") or ""] for r in sw]))
        md.append("")
    perr = [r for r in probes if "error" in r and r["probe"] not in ("ncclCommRegister",)]
    for e in perr:
        if e.get("probe") != "sleep_wake":
            md += [f"Probe {e['probe']} error: `{e['error']}`", ""]
    return md


def section_ddp(out_dir):
    rows = jsonl(os.path.join(out_dir, "ddp.jsonl"))
    md = ["### Data-parallel training (`scripts/ddp_train.py`)", ""]
    if not rows:
        return md + ["Not run: no `ddp.jsonl`.", ""]
    for w in sorted({r["world"] for r in rows if "world" in r}):
        runs = [r for r in rows if r.get("world") == w and "ranks" in r]
        status = [r for r in rows if r.get("world") == w and "status" in r]
        good = [r for r in runs if all("losses" in x for x in r["ranks"])]
        if status:
            md.append(f"World {w}: runs " + ", ".join(
                f"{s['run']} {s['allocator']} {s['status']}" for s in status) + ".")
        if good:
            c = good[0]["config"]
            params = good[0]["ranks"][0].get("params")
            md.append(f"Model: {c['layers']} layers, d {c['dim']}, {c['heads']} heads, sequence "
                      f"{c['seq']}, batch {c['batch']} per rank, vocabulary {c['vocab']}"
                      + (f", {params / 1e6:.1f} M parameters" if params else "")
                      + f"; {c['steps']} steps, median step time over steps {c['warmup']}.."
                      f"{c['steps'] - 1}.")
            ref = good[0]
            same = all([x["losses"] for x in r["ranks"]] == [x["losses"] for x in ref["ranks"]]
                       for r in good)
            first = [x["losses"][0] for x in ref["ranks"]]
            last = [x["losses"][-1] for x in ref["ranks"]]
            md.append(f"Losses identical bit for bit in all {len(good)} runs (every rank, every "
                      f"step): {'yes' if same else 'NO'}. Rank losses at step 0: "
                      + ", ".join(f"{v:.4f}" for v in first) + "; last step: "
                      + ", ".join(f"{v:.4f}" for v in last) + ".")
            warn = sorted({m for r in good for x in r["ranks"]
                           for m in x.get("nondeterministic_warnings", [])})
            if warn:
                md.append("Determinism warnings: " + "; ".join(f"`{m}`" for m in warn) + ".")
            md.append("")
            step = {}
            for r in good:
                for x in r["ranks"]:
                    step.setdefault(r["allocator"], []).append(x["step_ms"])
            d = statistics.median(step["default"]) if "default" in step else None
            g = statistics.median(step["gpu-arena"]) if "gpu-arena" in step else None
            md.append(f"Median step time (all runs and ranks): default {num(d, '{:.2f}')} ms, "
                      f"gpu-arena {num(g, '{:.2f}')} ms, ratio "
                      f"{num(g / d if d and g else None, '{:.3f}')}.")
            md.append("")
            rows_ = []
            for r in good:
                for x in r["ranks"]:
                    live, phys = x["peak_live"], x["peak_physical"]
                    rows_.append([r["run"], r["allocator"], x["rank"], num(x["step_ms"], "{:.2f}"),
                                  num(live / MiB), num(phys / MiB),
                                  num(phys / live if live and live > 0 else None, "{:.3f}"),
                                  num(x.get("device_used_at_end", 0) / MiB, "{:.0f}")])
            md.append(table(["run", "allocator", "rank", "median step ms", "peak live MiB",
                             "peak physical MiB", "physical / live", "device used at end MiB"],
                            rows_))
            md += ["", "(default: peak live = `max_memory_allocated`, peak physical = "
                       "`max_memory_reserved`; gpu-arena: peak live and peak committed of its "
                       "stats.)"]
        errors = [x for r in runs for x in r["ranks"] if "error" in x]
        for e in errors:
            md += ["", f"Rank {e['rank']} error: `{e['error']}`"]
        md.append("")
    return md


RAW = ("steps.txt", "inventory.txt", "tests.log", "nccl.log", "ddp.log")
RAW_LINES = 400
FENCE = "`" * 3


def section_raw(out_dir):
    """Each log in a collapsed block (head and tail where longer than RAW_LINES)."""
    md = ["### Raw logs", ""]
    for name in RAW:
        text = read(os.path.join(out_dir, name))
        if text is None:
            md += [f"`{name}`: not written.", ""]
            continue
        lines = text.rstrip("\n").split("\n")
        if len(lines) > RAW_LINES:
            half = RAW_LINES // 2
            lines = (lines[:half] + [f"... {len(lines) - RAW_LINES} lines left out "
                                     f"(the whole file is beside this page) ..."] + lines[-half:])
        md += [f"<details><summary><code>{name}</code> ({len(text.splitlines())} lines)</summary>",
               "", FENCE + "text"] + [ln.replace(FENCE, "'" * 3) for ln in lines]
        md += [FENCE, "", "</details>", ""]
    return md


def report(out_dir, raw=False):
    md = ["Generated by `scripts/multi_gpu_report.py` from the logs of one run of "
          "`scripts/multi_gpu_session.sh`.", ""]
    for section in (section_machine, section_tests, section_nccl, section_ddp):
        md += section(out_dir)
    if raw:
        md += section_raw(out_dir)
    return "\n".join(md).rstrip() + "\n"


def fill_doc(doc, text):
    body = read(doc)
    if body is None or BEGIN not in body or END not in body:
        sys.exit(f"{doc}: no {BEGIN} ... {END} markers")
    head, rest = body.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    with open(doc, "w") as f:
        f.write(head + BEGIN + "\n" + text + END + tail)


def self_test():
    """A made-up log of every kind; checks that each section finds it."""
    d = tempfile.mkdtemp(prefix="multi_gpu_report_")
    files = {
        "inventory.txt": "GPU 0: NVIDIA X (UUID: a)\nGPU 1: NVIDIA X (UUID: b)\n"
                         "index, name, pci.bus_id, driver_version, memory.total [MiB], c\n"
                         "0, NVIDIA X, 0, 999.1, 1 MiB, 1\n"
                         "PYTHON_TORCH torch=0.0 cuda=0 nccl=0.0.0 devices=2\n"
                         'INFO_JSON {"devices": [{"ordinal": 0, "name": "X", "vmm": true, '
                         '"memory": 1073741824, "granularity": 2097152, "shareable_handles": true,'
                         ' "peers": [1]}]}\n',
        "tests.log": "=== STEP peer_tests\n"
                     "test peer_ipc::cuda::a ... PEER grant owner=0 peer=1 committed_bytes=1048576"
                     " us=1.0 access=readwrite\n"
                     "PEER kernel owner=0 peer=1 target=sm_90 bytes=4 us=2.0\n"
                     "PEER kernel_results owner=0 peers=1 committed_before_grant=ok "
                     "committed_after_grant=ok buffer_after_grant=ok\n"
                     "PEER revoke owner=0 peer=1 pages=3 access_after=none "
                     "later_commit_access=none\nok\n"
                     "test peer_ipc::cuda::b ... skipped: needs 9 CUDA devices, found 2\nok\n"
                     "test peer_ipc::cuda::c ... PEER_COST backend=cuda peer_granted=0 "
                     "alloc_free_256B_ns=1.0 alloc_free_trim_64MiB_us=2.0 "
                     "driver_calls_per_64MiB=3.0 set_access_per_64MiB=1.0\n"
                     "PEER_COST_RATIO backend=cuda alloc_free_256B=1.000 "
                     "alloc_free_trim_64MiB=1.000\n"
                     "PEER_COMMIT backend=cuda peers=0 alloc_free_trim_64MiB_us=1.0 "
                     "alloc_free_trim_2MiB_us=1.0 set_access_64MiB_us=2.0\n"
                     "PEER_COMMIT backend=cuda peers=3 skipped: needs 4 devices, found 2\nFAILED\n"
                     "test cuda::x ... IPC test=cuda_two_gpus exporter_device=0 importer_device=1 "
                     "bytes=8 runs=2 import=ok pattern=ok answer_seen_by_exporter=ok "
                     "after_exporter_free_trim_sleep=ok intruder=refused\nok\n"
                     "test result: ok. 1 passed; 1 failed\n",
        "nccl.jsonl": "\n".join(json.dumps(r) for r in [
            {"phase": "setup", "world": 2, "torch": "0", "nccl": "0", "gpu": "X"},
            {"phase": "default", "world": 2, "allocator": "default", "bytes": MiB, "ok": True,
             "busbw_GBps": 100.0},
            {"phase": "gpu-arena", "world": 2, "allocator": "gpu-arena", "bytes": MiB,
             "ok": True, "busbw_GBps": 99.0},
            {"phase": "probe", "world": 2, "probe": "register_mem_pool", "pool": "gpu-arena",
             "bytes": 16 * MiB, "registered": "ok", "correct_after": True,
             "busbw_unregistered_GBps": 1.0, "busbw_registered_GBps": 2.0, "gain": 2.0},
            {"phase": "probe", "world": 2, "probe": "sleep_wake", "order": "a", "sleep_rc": 0,
             "wake_rc": 0, "completed": False, "hang": "did not complete"},
            {"phase": "default", "world": 2, "status": "ok"}]) + "\n",
        "ddp.jsonl": "\n".join(json.dumps(r) for r in [
            {"world": 2, "allocator": a, "run": i, "config": {
                "layers": 1, "dim": 8, "heads": 1, "seq": 4, "batch": 1, "vocab": 8, "steps": 3,
                "warmup": 1},
             "ranks": [{"rank": k, "params": 100, "losses": [2.0, 1.5, 1.0], "step_ms": 1.0 + i,
                        "peak_live": MiB, "peak_physical": 2 * MiB, "device_used_at_end": MiB}
                       for k in range(2)]}
            for i, a in enumerate(["default", "gpu-arena"])]) + "\n",
        "steps.txt": "STEP inventory rc=0 seconds=1 limit=30\nTOTAL seconds=9\n",
    }
    for name, text in files.items():
        with open(os.path.join(d, name), "w") as f:
            f.write(text)
    md = report(d)
    for want in ("2 GPUs", "| 1 | 1.0 (1) | readwrite | sm_90 |", "| `peer_ipc::cuda::b` | skipped",
                 "| `peer_ipc::cuda::c` | FAILED", "skipped: needs 4 devices", "| 1 MiB | 100.0 | 99.0 | 0.990 | yes |",
                 "≥ 0.98 at every size: yes", "| gpu-arena | 16 MiB | ok | - | yes |", "| `peer_ipc::cuda::c` | FAILED |  |",
                 "did not complete", "identical bit for bit in all 2 runs (every rank, every step): yes",
                 "ratio 2.000", "| cuda_two_gpus | 0 | 1 |", "| inventory | 0 | 1 | 30 |"):
        assert want in md, f"self-test: {want!r} missing from:\n{md}"
    doc = os.path.join(d, "doc.md")
    with open(doc, "w") as f:
        f.write(f"a\n{BEGIN}\nold\n{END}\nb\n")
    fill_doc(doc, report(d, raw=True))
    assert "<details><summary><code>tests.log</code>" in read(doc)
    assert read(doc).startswith(f"a\n{BEGIN}\nGenerated") and read(doc).endswith(f"{END}\nb\n")
    print("multi_gpu_report self-test: ok")


def main(argv):
    if argv[1:2] == ["--self-test"]:
        self_test()
        return 0
    if len(argv) < 2 or argv[1].startswith("-"):
        print(__doc__)
        return 2
    args = argv[2:]
    md = report(argv[1], raw="--raw" in args or "--doc" in args)
    if "--write" in args:
        with open(args[args.index("--write") + 1], "w") as f:
            f.write(md)
    if "--doc" in args:
        fill_doc(args[args.index("--doc") + 1], md)
    if "--write" not in args and "--doc" not in args:
        sys.stdout.write(md)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
