"""Hugging Face transformers against depthgate on the tiny checkpoints that hfDump.js wrote.

For each model in DIR/manifest.json: transformers' logits for the same prompt (eager attention,
on the GPU when there is one) in float32 and in bfloat16, compared with depthgate's CPU logits
and backend B's (CUDA) logits, row by row: max |a - b| / max |b|.

Tolerances:
  float32: depthgate widens every stored weight exactly and computes in f32, as transformers does
    in float32 (TF32 is off by default for matmuls), so they compute the same function; what is
    left is summation order and depthgate forming RoPE angles in double (4e-7 at position 40).
    1e-4 for the CPU (the bound the project's float64-reference tests use), 2e-3 for CUDA (the
    engine-parity bound: tensor-core paths for prompts of more than 8 rows).
  bfloat16: transformers then rounds every activation to bf16 (2^-8 relative per operation), so
    its logits move by about 1e-2 of the logit range; 0.1 separates that from a real bug (O(1)),
    and the argmax agreement is reported beside it.

  python3 hf_parity.py DIR --out FILE.json
  python3 hf_parity.py DIR --out FILE.json --self-test   (no torch: depthgate's CPU logits stand
      in for transformers', which exercises everything but the model run; used by the dry run)
"""
import argparse
import json
import os
import sys
import time
from array import array

TOL = {("float32", "cpu"): 1e-4, ("float32", "b"): 2e-3, ("bfloat16", "cpu"): 0.1, ("bfloat16", "b"): 0.1}


def read_f32(path, rows, vocab):
    a = array("f")
    with open(path, "rb") as f:
        a.frombytes(f.read())
    if len(a) != rows * vocab:
        raise ValueError(f"{path}: {len(a)} floats, expected {rows} x {vocab}")
    return [a[i * vocab:(i + 1) * vocab] for i in range(rows)]


def compare(ours, theirs):
    """(worst row error, rows whose argmax agrees, rows)."""
    worst, agree = 0.0, 0
    for a, b in zip(ours, theirs):
        num = max(abs(x - y) for x, y in zip(a, b))
        den = max(abs(y) for y in b)
        e = num / den if den > 0 else float("inf")
        if e != e:  # NaN
            e = float("inf")
        worst = max(worst, e)
        agree += max(range(len(a)), key=a.__getitem__) == max(range(len(b)), key=b.__getitem__)
    return worst, agree, len(ours)


def hf_logits(model_dir, tokens, dtype_name):
    import torch
    from transformers import AutoModelForCausalLM

    dtype = getattr(torch, dtype_name)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    kwargs = {"attn_implementation": "eager"}
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, **kwargs)
    except TypeError:  # transformers before 4.56 names it torch_dtype
        model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=dtype, **kwargs)
    model = model.to(device).eval()
    with torch.no_grad():
        out = model(input_ids=torch.tensor([tokens], device=device)).logits[0].float().cpu()
    del model
    return [array("f", row) for row in out.tolist()]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--out", required=True)
    ap.add_argument("--self-test", action="store_true")
    args = ap.parse_args()
    t0 = time.time()
    manifest = json.load(open(os.path.join(args.dir, "manifest.json")))
    report = {"b": manifest.get("b"), "kvNote": manifest.get("kvNote", ""), "selfTest": args.self_test, "models": []}
    if args.self_test:
        # The comparison must see a wrong logit: one row with one element off by 1% of the range.
        row = array("f", [float(i % 7) for i in range(50)])
        bad = array("f", row)
        bad[3] += 0.06
        assert compare([row], [row])[0] == 0 and compare([bad], [row])[0] > 1e-3, "compare() misses a wrong logit"
    else:
        import torch
        import transformers

        report["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__,
                              "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}
    passed = failed = 0
    for m in manifest["models"]:
        entry = {"name": m["name"], "dtype": m["dtype"], "kv": m.get("kv"), "comparisons": []}
        ours = {}
        for key in ("cpu", "b"):
            d = m.get(key) or {}
            if "file" in d:
                ours[key] = (d["backend"], read_f32(d["file"], d["rows"], d["vocab"]))
            else:
                entry["comparisons"].append({"depthgate": d.get("backend", key), "ok": False,
                                             "error": d.get("error", "no logits")})
                failed += 1
        for hf_dtype in ("float32", "bfloat16"):
            try:
                theirs = ours["cpu"][1] if args.self_test else hf_logits(m["dir"], m["tokens"], hf_dtype)
            except Exception as e:  # one model's failure is recorded, the others still run
                entry["comparisons"].append({"hf": hf_dtype, "ok": False, "error": f"transformers: {e!r}"})
                failed += 1
                continue
            for key, (backend, logits) in ours.items():
                worst, agree, rows = compare(logits, theirs)
                tol = TOL[(hf_dtype, key)]
                ok = worst <= tol
                passed += ok
                failed += not ok
                entry["comparisons"].append({"hf": hf_dtype, "depthgate": backend, "maxRelErr": worst, "tol": tol,
                                             "ok": ok, "argmaxAgree": f"{agree}/{rows}"})
                print(f"{m['name']:24s} transformers {hf_dtype:8s} vs depthgate {backend:5s}: "
                      f"max rel err {worst:.3g} (tol {tol:g}) argmax {agree}/{rows} {'ok' if ok else 'FAIL'}")
        report["models"].append(entry)
    report.update(passed=passed, failed=failed, seconds=round(time.time() - t0, 2))
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"hf parity: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
