"""Control for issue 7's top-p finding: does plain SGLang agree with *itself* at T=0.6, top-p=0.9 when only
the batch size changes (max_running_requests 64 vs 5)? Different batch sizes run different GEMM/attention
tilings, so a context sitting 0.0016 below the nucleus threshold can flip there too. If it does, the
speculative-vs-plain difference is kernel numerics at a discontinuity, not the rejection sampler.

    python recipes/bench/topp_control.py MODEL_DIR --out $OUT/topp_control.json

MODEL_DIR: the peaked tiny model of tests/engine (built with --build DIR if it does not exist). Prints and
writes the chi-square p-value per position, plain(64) vs plain(5), and plain(64) vs plain(64, other seed).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter


def build_peaked(out: str, scale: float = 6.0) -> str:
    import torch
    from transformers import AutoModelForCausalLM

    from er_verl.models.tiny import build_random_model, build_tokenizer

    texts = [f"{i} plus {i + 1} is {2 * i + 1}. The quick brown fox jumps over the lazy dog." for i in range(3000)]
    build_tokenizer(texts, 512, out + "/tok")
    path = build_random_model("tiny", out + "/tok", out + "/base", seed=0)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(scale)
    model.save_pretrained(out + "/model")
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(path).save_pretrained(out + "/model")
    return out + "/model"


def sample(path: str, max_running: int, seed: int, n: int, new: int) -> list[list[int]]:
    """Token ids of ``n`` sequences; kept next to the model, so a rerun after a cut-off call resumes."""
    cache = f"{path}/samples_bs{max_running}_seed{seed}_n{n}_new{new}.json"
    if os.path.exists(cache):
        return json.load(open(cache))
    out = _sample(path, max_running, seed, n, new)
    json.dump(out, open(cache, "w"))
    return out


def _sample(path: str, max_running: int, seed: int, n: int, new: int) -> list[list[int]]:
    import sglang

    os.environ.pop("ER_VERL_ENGINE", None)
    engine = sglang.Engine(model_path=path, mem_fraction_static=0.3, log_level="error", attention_backend="flashinfer",
                           cuda_graph_max_bs_decode=64, disable_prefill_cuda_graph=True, random_seed=seed,
                           max_running_requests=max_running)
    try:
        params = {"temperature": 0.6, "top_p": 0.9, "max_new_tokens": new, "ignore_eos": True}
        return [o["output_ids"] for o in engine.generate(input_ids=[[5, 6, 7, 8]] * n, sampling_params=params)]
    finally:
        engine.shutdown()


def p_values(a: list[list[int]], b: list[list[int]], new: int) -> list[float]:
    import numpy as np
    from scipy.stats import chi2_contingency

    out = []
    for pos in range(new):
        ca, cb = Counter(s[pos] for s in a), Counter(s[pos] for s in b)
        common = [t for t in set(ca) | set(cb) if ca[t] + cb[t] >= 5]
        table = np.array([[c[t] for t in common] + [sum(v for t, v in c.items() if t not in common)] for c in (ca, cb)])
        table = table[:, table.sum(0) > 0]
        out.append(float(chi2_contingency(table)[1]) if table.shape[1] > 1 else 1.0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", help="work folder: the peaked model is WORK/model (made by --build if missing)")
    ap.add_argument("--build", action="store_true")
    ap.add_argument("--n", type=int, default=2560)
    ap.add_argument("--new", type=int, default=10)
    ap.add_argument("--out", default="topp_control.json")
    args = ap.parse_args()
    path = args.model + "/model"
    if not os.path.exists(path):
        if not args.build:
            raise SystemExit(f"{path} does not exist; pass --build to make the peaked model there")
        build_peaked(args.model)
    t0 = time.time()
    base = sample(path, 64, 0, args.n, args.new)
    small = sample(path, 5, 0, args.n, args.new)
    reseed = sample(path, 64, 1, args.n, args.new)
    result = {"what": __doc__.splitlines()[0], "n": args.n, "config": {"temperature": 0.6, "top_p": 0.9},
              "p_bs64_vs_bs5": p_values(base, small, args.new), "p_bs64_vs_bs64_seed1": p_values(base, reseed, args.new),
              "seconds": time.time() - t0, "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(result, indent=1))
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
