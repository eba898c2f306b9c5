"""Run by test_gumbel.py in a fresh interpreter with TRITON_INTERPRET=1 (set before triton is imported): the
Gumbel-max K=0 sampler's kernels on CPU tensors (the interpreter takes ~50 ms per program, so the sizes are
tiny; the distribution is tested on the GPU). Prints RESULT {json} with what the test asserts on."""

import json
import torch

from er_verl.engine import gumbel


def greedy_and_seeds() -> dict:
    """Six rows, V = 100, BLOCK 32: greedy rows by T = 0 and by top_k = 1, sampled rows at T = 1 and 0.5."""
    gumbel.BLOCK = 32
    logits = 4.0 * torch.randn(6, 100, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([0.0, 1.0, 1.0, 0.5, 0.0, 1.0])
    k = torch.tensor([-1, 1, -1, -1, 50, -1])
    out = {"argmax": logits.argmax(-1).tolist()}
    for target in (1, 24):  # one chunk per row, or four
        gumbel.TARGET_PROGRAMS = target
        out[f"chunks_{target}"] = gumbel.num_chunks(6, 100)
        out[f"tokens_{target}"] = gumbel.sample_tokens(logits, t, k, torch.Generator().manual_seed(6)).tolist()
    gen = torch.Generator().manual_seed(7)
    out["first"] = gumbel.sample_tokens(logits, t, k, gen).tolist()
    out["again"] = gumbel.sample_tokens(logits, t, k, torch.Generator().manual_seed(7)).tolist()
    out["later"] = [gumbel.sample_tokens(logits, t, k, gen).tolist() for _ in range(3)]
    return out


if __name__ == "__main__":
    print("RESULT" + json.dumps(greedy_and_seeds()))
