"""Controls for issue 7's top-p finding (speculative K=3 vs plain SGLang differ at T=0.6, top-p=0.9): which
part of the path moves the nucleus? Each variant samples the same prompt 2560 times, 10 tokens, and is
compared with plain SGLang at batch 64 (chi-square per position):

* plain SGLang at batch 5 and with another seed: do batch size (GEMM/attention tiling) or the seed alone move it?
* er_verl at K=0 as the target's decode graph with er_verl's sampler: is the sampler's top-p SGLang's?
* er_verl at K=0 as SGLang's own one-token TARGET_VERIFY (the extend attention kernel) and SGLang's sampler:
  does the verify kernel alone move it, with no er_verl sampling involved?
* er_verl at K=3: the exactness test's setting.

    python recipes/bench/topp_control.py WORK [--build] --out $OUT/topp_control.json

WORK/model is the peaked tiny model of tests/engine (made by --build if missing); samples are cached there.

Ran on the H200 (2026-11-25): the plain variants (results/issue7_topp_control_plain_h200.json). The er_verl
variants have not finished here: the one attempt's first er_verl engine did not come up within the call's
time, cause not found. The same comparisons ran as GPU tests instead: test_top_p_nucleus_at_k0[0|1] in
tests/engine/test_reliability_gpu.py.
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


# name -> (max_running_requests, seed, forced K or None for plain SGLang, ER_VERL_PLAIN_K0)
VARIANTS = {
    "plain_bs64": (64, 0, None, None),
    "plain_bs5": (5, 0, None, None),
    "plain_bs64_seed1": (64, 1, None, None),
    "ours_k0_decode": (64, 0, 0, "1"),   # K=0 as the target's decode graph + er_verl's sampler (verify.draft_sample)
    "ours_k0_verify": (64, 0, 0, "0"),   # K=0 as SGLang's one-token TARGET_VERIFY (extend kernel) + SGLang's sampler
    "ours_k3": (64, 0, 3, "1"),          # speculative rounds at K=3 (the exactness test's setting)
}


def sample(path: str, name: str, n: int, new: int) -> list[list[int]]:
    """Token ids of ``n`` sequences for one variant; kept next to the model, so a rerun resumes."""
    cache = f"{path}/samples_{name}_n{n}_new{new}.json"
    if os.path.exists(cache):
        return json.load(open(cache))
    out = _sample(path, *VARIANTS[name], n, new)
    json.dump(out, open(cache, "w"))
    return out


def _sample(path: str, max_running: int, seed: int, k, plain_k0, n: int, new: int) -> list[list[int]]:
    import sglang

    from er_verl.config import EfficientConfig
    from er_verl.engine.server_args import self_draft_env, self_draft_server_args

    kw = dict(mem_fraction_static=0.3, log_level="error", attention_backend="flashinfer", cuda_graph_max_bs_decode=64,
              disable_prefill_cuda_graph=True, random_seed=seed, max_running_requests=max_running)
    for key in ("ER_VERL_ENGINE", "ER_VERL_SELF_DRAFT", "ER_VERL_SPEC_K", "ER_VERL_PLAIN_K0", "ER_VERL_CONTROL"):
        os.environ.pop(key, None)
    if k is not None:
        os.environ.update({"ER_VERL_ENGINE": "1", "ER_VERL_PLAIN_K0": plain_k0, **self_draft_env(k, None)})
        kw.update(self_draft_server_args(EfficientConfig(max_draft_len=3), path))
    engine = sglang.Engine(model_path=path, **kw)
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


def top_tokens(seqs: list[list[int]], new: int, top: int = 4) -> list[list]:
    """Per position, the ``top`` most frequent tokens with their counts."""
    return [Counter(s[pos] for s in seqs).most_common(top) for pos in range(new)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", help="work folder: the peaked model is WORK/model (made by --build if missing)")
    ap.add_argument("--build", action="store_true")
    ap.add_argument("--n", type=int, default=2560)
    ap.add_argument("--new", type=int, default=10)
    ap.add_argument("--out", default="topp_control.json")
    ap.add_argument("--variants", default="plain_bs5,plain_bs64_seed1,ours_k0_decode,ours_k0_verify,ours_k3",
                    help=f"compared with plain_bs64; from {', '.join(VARIANTS)}")
    args = ap.parse_args()
    path = args.model + "/model"
    if not os.path.exists(path):
        if not args.build:
            raise SystemExit(f"{path} does not exist; pass --build to make the peaked model there")
        build_peaked(args.model)
    t0 = time.time()
    names = args.variants.split(",")
    samples = {name: sample(path, name, args.n, args.new) for name in ["plain_bs64"] + names}
    result = {"what": __doc__.splitlines()[0], "n": args.n, "config": {"temperature": 0.6, "top_p": 0.9},
              "p_vs_plain_bs64": {name: p_values(samples["plain_bs64"], samples[name], args.new) for name in names},
              "top_tokens": {name: top_tokens(samples[name], args.new) for name in ["plain_bs64"] + names},
              "seconds": time.time() - t0, "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(result, indent=1))
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
