"""Merges what every part of scripts/gpu-check.sh wrote into OUT/summary.json (each part's status,
the correctness results, the verdict) and OUT/bench.json (the benchmarks: device, command, the
ceilings measured in the same call, each kernel against them, decode against the floor, skipping
against the ideal saving, FlexiDepth against dense, batch 1/8/32, the peers, and the issue's
targets, each marked met, missed or not measured). Prints a short table last. Standard library
only, so the dry run runs it too.

  python3 summarize.py --work DIR --out OUT --mode gpu|dry-run --command "..." [--bundle MANIFEST]
"""
import argparse
import json
import os
import re
import time


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        return {"missing": f"{os.path.basename(path)}: {e}"}


def parts(work):
    out = []
    try:
        with open(os.path.join(work, "parts.jsonl")) as f:
            for line in f:
                line = line.strip()
                if line:
                    out.append(json.loads(line))
    except OSError:
        pass
    return out


def memcheck(path):
    try:
        text = open(path, errors="replace").read()
    except OSError:
        return {"status": "not run"}
    sums = [int(n) for n in re.findall(r"ERROR SUMMARY: (\d+) error", text)]
    return {"errorSummaries": sums, "errors": sum(sums), "runs": len(sums)}


def kernels(ops, ceil):
    rows = []
    copy = (ceil or {}).get("copyGBs")
    mm = (ceil or {}).get("bf16MatmulTFLOPs")
    for e in ops.get("ops", []):
        s = e["seconds"]
        gbs, tfl = e["bytes"] / s / 1e9, e["flops"] / s / 1e12
        r = {"model": e["model"], "op": e["op"], "detail": e["detail"], "rows": e["rows"], "us": s * 1e6,
             "GBs": gbs, "TFLOPs": tfl}
        if copy:
            r["fractionOfCopyBandwidth"] = gbs / copy
        if mm:
            r["fractionOfBf16Matmul"] = tfl / (mm)
        rows.append(r)
    return rows


def target(name, value, ok, want):
    return {"target": name, "value": value, "met": ok, "want": want}


def targets(dg, torch):
    t = []
    peers = {}
    for p in (torch or {}).get("peers", []):
        peers.setdefault((p["model"], p["batch"]), {})[p["impl"]] = p["tokensPerSecond"]
    for m in (dg or {}).get("models", []):
        name = m["name"]
        for d in m.get("dense", []):
            if d["batch"] == 1:
                r = d.get("ratioToFloor")
                t.append(target(f"{name}: batch-1 decode time / floor", r, None if r is None else r <= 1.15, "<= 1.15"))
            ours = d["tokensPerSecond"]
            for impl, theirs in peers.get((name, d["batch"]), {}).items():
                t.append(target(f"{name}: batch {d['batch']} tokens/s vs {impl}", ours / theirs, ours > theirs, "> 1 (ahead)"))
        for s in m.get("skipping", []):
            v = s["shareOfIdealSaving"]
            t.append(target(f"{name}: {s['policy']} {s['skipped']}/{s['of']} skipped, share of the ideal saving", v, v >= 0.9, ">= 0.9"))
        for f in m.get("flexidepth", []):
            v = f["shareOfIdealSaving"]
            t.append(target(f"{name}: flexidepth {f['skipped']:.0%} skipped, share of the ideal saving" if f.get("skipped") is not None
                            else f"{name}: flexidepth, share of the ideal saving", v, v >= 0.9, ">= 0.9"))
            if f["targetSkip"] == 0.25:
                t.append(target(f"{name}: flexidepth ~25% skipped, speed-up vs dense", f["speedupVsDense"],
                                f["speedupVsDense"] >= 1.2, ">= 1.2"))
    return t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--mode", default="gpu")
    ap.add_argument("--command", default="")
    ap.add_argument("--bundle", default="")
    args = ap.parse_args()
    W, O = args.work, args.out
    ps = parts(W)
    ops = load(os.path.join(O, "ops-parity.json"))
    eng = load(os.path.join(O, "engine-parity.json"))
    hf = load(os.path.join(O, "hf-parity.json"))
    mc = memcheck(os.path.join(O, "memcheck.txt"))
    torch = load(os.path.join(W, "bench-torch.json"))
    dg = load(os.path.join(W, "bench-depthgate.json"))
    opsb = load(os.path.join(W, "ops-bench.json"))
    bundle = load(args.bundle) if args.bundle else {}
    ceil = torch.get("ceilings")
    device = torch.get("device")
    probe = ops.get("cudaProbe")
    if not device and isinstance(probe, dict) and probe.get("devices"):
        device = probe["devices"][0].get("name")

    results = {
        "opsParity": {k: ops.get(k) for k in ("a", "b", "passed", "failed", "seconds", "error", "missing")},
        "engineParity": {k: eng.get(k) for k in ("b", "kvDtypes", "kvNote", "passed", "failed", "error", "missing")},
        "hfParity": {k: hf.get(k) for k in ("b", "passed", "failed", "versions", "selfTest", "missing")},
        "memcheck": mc,
    }
    failed_parts = [p["part"] for p in ps if p["status"] not in ("ok", "skipped")]
    correctness_ok = (ops.get("failed") == 0 and eng.get("failed") == 0 and hf.get("failed") == 0
                      and (args.mode != "gpu" or mc.get("errors") == 0 and mc.get("runs", 0) > 0))
    tg = targets(dg, torch)
    if args.mode != "gpu":
        for t in tg:  # the dry run's numbers come from the CPU on a tiny model: plumbing, not figures
            t["met"] = None
            t["note"] = "dry run: the CPU backend on a tiny model stands in; not a measurement"
    summary = {
        "mode": args.mode, "command": args.command, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": device, "bundle": bundle, "parts": ps, "failedParts": failed_parts, "results": results,
        "correctness": "passed" if correctness_ok and not failed_parts else "failed",
        "targets": tg,
    }
    bench = {
        "device": device, "command": args.command, "mode": args.mode, "date": summary["date"],
        "ceilings": ceil, "kernels": kernels(opsb, ceil), "depthgate": dg, "peers": torch.get("peers"),
        "torchErrors": torch.get("errors"), "versions": {k: torch.get(k) for k in ("torch", "transformers")},
        "targets": tg, "opsBenchBackend": opsb.get("backend"), "opsBenchMethod": opsb.get("method"),
    }
    with open(os.path.join(O, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    with open(os.path.join(O, "bench.json"), "w") as f:
        json.dump(bench, f, indent=1)

    print(f"\n==== gpu-check ({args.mode}) on {device or 'no GPU'}: correctness {summary['correctness']}")
    for p in ps:
        print(f"  {p['part']:18s} {p['status']:8s} {p.get('seconds', 0):7.1f} s  {p.get('note', '')}")
    print(f"  ops parity: {ops.get('passed')} passed, {ops.get('failed')} failed (B = {ops.get('b')})")
    print(f"  engine parity: {eng.get('passed')} passed, {eng.get('failed')} failed, KV {eng.get('kvDtypes')}")
    print(f"  transformers parity: {hf.get('passed')} passed, {hf.get('failed')} failed")
    print(f"  memcheck: {mc}")
    if ceil:
        print(f"  ceilings: copy {ceil['copyGBs']:.0f} GB/s, bf16 matmul {ceil['bf16MatmulTFLOPs']:.0f} TFLOP/s")
    for t in tg:
        v = t["value"]
        vs = f"{v:.3g}" if isinstance(v, (int, float)) else str(v)
        print(f"  target {t['target']}: {vs} (want {t['want']}) {'met' if t['met'] else 'MISSED' if t['met'] is False else '-'}")


if __name__ == "__main__":
    main()
