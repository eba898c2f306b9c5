"""Run by test_gumbel.py in a fresh interpreter with TRITON_INTERPRET=1 (set before triton is imported): the
Gumbel-max K=0 sampler's kernels on CPU tensors (the interpreter takes ~50 ms per program, so the sizes are
tiny; the distribution is tested on the GPU). Prints RESULT {json} with what the test asserts on."""

import json
import torch

from er_verl.engine import gumbel


def greedy_and_seeds() -> dict:
    """Six rows, V = 100: greedy rows by T = 0 and by top_k = 1, sampled rows at T = 1 and 0.5."""
    logits = 4.0 * torch.randn(6, 100, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([0.0, 1.0, 1.0, 0.5, 0.0, 1.0])
    k = torch.tensor([-1, 1, -1, -1, 50, -1])
    out = {"argmax": logits.argmax(-1).tolist()}
    for block in (128, 32):  # one block per row (its last quarter masked), or four (the last one 4 entries)
        gumbel.BLOCK = block
        out[f"tokens_{block}"] = gumbel.sample_tokens(logits, t, k, torch.Generator().manual_seed(6)).tolist()
    gen = torch.Generator().manual_seed(7)
    out["first"] = gumbel.sample_tokens(logits, t, k, gen).tolist()
    out["again"] = gumbel.sample_tokens(logits, t, k, torch.Generator().manual_seed(7)).tolist()
    out["later"] = [gumbel.sample_tokens(logits, t, k, gen).tolist() for _ in range(3)]
    return out


if __name__ == "__main__":
    print("RESULT" + json.dumps(greedy_and_seeds()))
