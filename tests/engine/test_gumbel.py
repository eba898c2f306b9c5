"""The one-pass Gumbel-max K=0 sampler (``er_verl.engine.gumbel``): greedy rows take the argmax with one block per
row and with several, and a seeded generator repeats its draws (CPU, Triton's interpreter, tiny sizes); compiled
on CUDA its draws follow softmax(logits / T) for a small and a large batch (``gpu`` tests)."""

import json
import os
import subprocess
import sys

import pytest
import torch

PROBE = os.path.join(os.path.dirname(__file__), "gumbel_probe.py")


def run_probe() -> dict:
    """The CPU cases run in a fresh interpreter: TRITON_INTERPRET must be set before triton is imported."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, PROBE], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


def chi2_pvalue(samples: torch.Tensor, p: torch.Tensor) -> float:
    """Goodness of fit of samples [N] to p [V] (bins with expected count < 5 pooled); 0 if p = 0 is hit.
    The chi-square survival function is torch's regularized upper incomplete gamma (no scipy on the GPU host)."""
    p = p.double() / p.double().sum()
    counts = torch.bincount(samples.cpu(), minlength=p.numel()).double()
    if counts[p == 0].sum() > 0:
        return 0.0
    expected = p * counts.sum()
    big = expected >= 5
    obs = torch.cat([counts[big], counts[~big].sum(0, keepdim=True)])
    exp = torch.cat([expected[big], expected[~big].sum(0, keepdim=True)])
    keep = exp > 0
    stat = ((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum()
    dof = torch.tensor(float(keep.sum() - 1), dtype=torch.float64)
    return float(torch.special.gammaincc(dof / 2, stat / 2))


def test_greedy_rows_take_the_argmax_and_seeds_repeat():
    """CPU (Triton's interpreter): T = 0 and top_k = 1 rows return argmax(logits) with one block per row and with
    four; the same seed gives the same draws, and later calls on one generator give other draws."""
    r = run_probe()
    greedy = [0, 1, 4]
    for key in ("tokens_128", "tokens_32"):
        assert [r[key][i] for i in greedy] == [r["argmax"][i] for i in greedy]
    assert r["first"] == r["again"]
    assert any(later != r["first"] for later in r["later"])
    assert all([later[i] for i in greedy] == [r["argmax"][i] for i in greedy] for later in r["later"])


@pytest.mark.gpu
@pytest.mark.parametrize("rows", [8, 600])
def test_gpu_draws_follow_softmax(rows):
    """Compiled on CUDA, Qwen's vocabulary size: 60,000+ draws at T = 0.8 fit softmax(logits / 0.8) (chi-square
    p > 1e-3, TV < 0.03) and not the T = 1 law; greedy rows return the argmax."""
    from er_verl.engine import gumbel

    vocab = 151_936
    g = torch.Generator().manual_seed(8)
    logits = torch.full((vocab,), -20.0)
    logits[::760] = 2.0 * torch.randn(200, generator=g)  # 200 tokens spread over the vocabulary hold the mass
    gen = torch.Generator(device="cuda").manual_seed(9)
    row = logits.cuda().expand(rows, -1).contiguous()
    t, k = torch.full((rows,), 0.8, device="cuda"), torch.full((rows,), -1, device="cuda")
    samples = torch.cat([gumbel.sample_tokens(row, t, k, gen) for _ in range(max(1, 60_000 // rows))])
    p = torch.softmax(logits.double() / 0.8, -1)
    tv = 0.5 * float((torch.bincount(samples.cpu(), minlength=vocab).double() / samples.numel() - p).abs().sum())
    assert chi2_pvalue(samples, p) > 1e-3 and tv < 0.03
    assert chi2_pvalue(samples, torch.softmax(logits.double(), -1)) < 1e-3  # the T = 1 law is told apart
    batch = torch.randn(rows, vocab, device="cuda")
    zero = torch.zeros(rows, device="cuda")
    out = gumbel.sample_tokens(batch, zero, torch.full((rows,), -1, device="cuda"), gen)
    assert torch.equal(out, batch.argmax(-1))
