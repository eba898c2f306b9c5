"""Best-K speedup over plain per batch size, FlashInfer vs triton drafts (the two JSONs of this comparison).
python3 results/logs/issue4_triton_drafts_2026-11-26/plot.py -> results/issue4_bench_decode_triton_drafts_h200.png"""
import json
from collections import defaultdict

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

rows = [dict(r, host=r.get("host", 1)) for r in json.load(open("results/issue4_bench_decode_triton_drafts_h200.json"))["rows"]]
rows += [r for r in json.load(open("results/issue4_bench_decode_triton_drafts_long_h200.json"))["rows"]
         if not r["label"].startswith("long")]
plain = defaultdict(list)
for r in rows:
    if r["engine"] == "plain":
        plain[(r["host"], r["bs"])].append(r["tok_s"])
best = defaultdict(float)  # (host, process, label, alpha, bs) -> best tok/s over K > 0
for r in rows:
    if r["engine"] == "ours" and r["k"]:
        key = (r["host"], r["process"], r["label"], r["alpha"], r["bs"])
        best[key] = max(best[key], r["tok_s"])
fig, ax = plt.subplots(figsize=(7, 4))
series = defaultdict(list)
for (host, proc, label, alpha, bs), v in sorted(best.items()):
    ref = sum(plain[(host, bs)]) / len(plain[(host, bs)])
    series[(label, alpha, host, proc)].append((bs, v / ref))
for (label, alpha, host, proc), pts in sorted(series.items()):
    xs, ys = zip(*sorted(pts))
    style = "-" if label.startswith("triton") else "--"
    ax.plot(xs, ys, style, marker="o", label=f"{label} α={alpha} (host {host}, process {proc})")
ax.axhline(1.0, color="gray", lw=0.8)
ax.set_xscale("log", base=2)
ax.set_xlabel("batch size")
ax.set_ylabel("best-K tokens/s vs plain SGLang (same host)")
ax.set_title("8B shape, H200, 256-token prompts, forced α (systems measurement)", fontsize=9)
ax.legend(fontsize=6)
fig.tight_layout()
fig.savefig("results/issue4_bench_decode_triton_drafts_h200.png", dpi=120)
