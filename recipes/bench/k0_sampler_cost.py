"""GPU time of one K=0 sampling call over [B, V] fp32 logits (V = 151,936, Qwen's vocabulary) at T = 0.8, no
filtering, and the host time of one call with GPU work queued ahead: ours' torch sampler (``verify.sample_tokens``), the one-pass Triton Gumbel-max sampler
(``gumbel.sample_tokens``) and one argmax over the logits (a single read pass: the floor). Torch only, no
staging. Writes $OUT/k0_sampler_cost.json."""
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.getcwd())
from er_verl.engine import gumbel, verify  # noqa: E402

VOCAB = 151_936


def gpu_ms(fn, reps: int = 50) -> float:
    """Median GPU milliseconds of fn() over reps calls, each between its own CUDA events."""
    for _ in range(5):
        fn()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return sorted(times)[len(times) // 2]


def host_us(fn, reps: int = 30) -> float:
    """Median host microseconds of one fn() call while ~2 ms of GPU work is queued ahead of it (so a call that
    synchronises with the device shows as ~ms, one that only enqueues as ~us)."""
    big = torch.randn(4096, 4096, device="cuda")
    times = []
    for _ in range(reps):
        for _ in range(8):
            big @ big
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        torch.cuda.synchronize()
    return 1e6 * sorted(times)[len(times) // 2]


def main() -> None:
    gen = torch.Generator(device="cuda").manual_seed(0)
    rows = []
    for bs in (1, 8, 32, 128, 256, 400, 512):
        logits = torch.randn(bs, VOCAB, device="cuda")
        t = torch.full((bs,), 0.8, device="cuda")
        k = torch.full((bs,), -1, device="cuda", dtype=torch.int32)
        p = torch.ones(bs, device="cuda")
        m = torch.zeros(bs, device="cuda")
        row = dict(bs=bs,
                   torch_ms=gpu_ms(lambda: verify.sample_tokens(logits, t, k, p, m, gen, False)),
                   gumbel_ms=gpu_ms(lambda: gumbel.sample_tokens(logits, t, k, gen)),
                   argmax_ms=gpu_ms(lambda: logits.argmax(-1)),
                   torch_host_us=host_us(lambda: verify.sample_tokens(logits, t, k, p, m, gen, False)),
                   gumbel_host_us=host_us(lambda: gumbel.sample_tokens(logits, t, k, gen)),
                   get_state_host_us=host_us(lambda: gen.get_state()),
                   logits_gb=bs * VOCAB * 4 / 1e9)
        rows.append(row)
        print(row, flush=True)
    out = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, vocab=VOCAB, temperature=0.8,
               command="python3 recipes/bench/k0_sampler_cost.py", rows=rows)
    with open(os.path.join(os.environ.get("OUT", "/tmp"), "k0_sampler_cost.json"), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
