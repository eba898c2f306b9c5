"""Issue 7 on the GPU: exactness over >= 1e5 sampled tokens, a long-tailed rollout of 1024 sequences with
an abort in the middle (SGLang's own KV/slot invariant checks on at every busy step and at idle), and
injected faults falling back to plain decoding. A tiny random Qwen2; ``peaked_model_path`` scales its
tied embeddings so that acceptance is non-trivial. CUDA only; the first boot on a fresh host JIT-compiles.
"""

import asyncio
import os

import numpy as np
import pytest
import torch

from engine_env import environ
from test_spec_round_gpu import ENGINE_KW, KMAX, PROMPTS, contingency, tokens_per_round

from er_verl.config import EfficientConfig
from er_verl.engine.server_args import self_draft_env, self_draft_server_args

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

# Temperature 0.6 and 1.0, each with top-p and with top-k (and min-p once): SGLang's sampling semantics.
CONFIGS = [
    {"temperature": 0.6, "top_p": 0.9},
    {"temperature": 1.0, "top_k": 20},
    {"temperature": 0.6, "top_k": 30, "top_p": 0.95},
    {"temperature": 1.0, "top_p": 0.8, "min_p": 0.05},
]


def engine(path, *, spec=None, engine_kw=None, **env):
    """Plain SGLang (spec None) or er_verl: spec = ("k", K) forces K; ("cfg", EfficientConfig) runs the controller."""
    import sglang

    kw = {**ENGINE_KW, **(engine_kw or {})}
    if spec is None:
        with environ(ER_VERL_ENGINE=None, ER_VERL_SELF_DRAFT=None, **env):
            return sglang.Engine(model_path=path, **kw)
    kind, value = spec
    cfg = value if kind == "cfg" else EfficientConfig(max_draft_len=KMAX)
    extra = self_draft_env(value, None) if kind == "k" else self_draft_env(None, cfg)
    with environ(ER_VERL_ENGINE="1", **extra, **env):
        return sglang.Engine(model_path=path, **{**kw, **self_draft_server_args(cfg, path)})


def run(path, prompts, sampling, spec=None, **env):
    eng = engine(path, spec=spec, **env)
    try:
        return eng.generate(input_ids=prompts, sampling_params=sampling)
    finally:
        eng.shutdown()


def test_sampled_tokens_follow_plain_decoding_over_1e5_tokens(peaked_model_path):
    """Per config and per position 1..NEW, the token distribution of speculative decoding (K=3) equals plain
    SGLang's (two-sample chi-square; one token per sequence per test, so draws are independent).

    Asserted for CONFIGS[1:] (T 0.6 and 1.0, top-k, top-p, min-p), >= 1e5 tokens among them. CONFIGS[0]
    (T=0.6, top-p 0.9) is printed, not asserted: on this model a nucleus sits ~0.002 below 0.9, and SGLang's
    own one-token verify pass (extend attention kernel) already moves it against plain decoding's decode
    kernel (p = 6.9e-26 on the H200, test_top_p_nucleus_at_k0[0]). There K=3 is asserted equal to that
    SGLang verify pass instead (test_top_p_boundary_speculation_equals_sglang_own_verify_pass)."""
    from scipy.stats import chi2_contingency

    seqs, new = int(os.environ.get("ER_VERL_TEST_SEQS", "3400")), 10
    sampling = [{**cfg, "max_new_tokens": new, "ignore_eos": True} for cfg in CONFIGS for _ in range(seqs)]
    prompts = [PROMPTS[0]] * len(sampling)
    plain = run(peaked_model_path, prompts, sampling)
    ours = run(peaked_model_path, prompts, sampling, spec=("k", KMAX))
    asserted = ours[seqs:]
    tokens = sum(len(o["output_ids"]) for o in asserted)
    print(f"{tokens} tokens per engine in the asserted configs; {tokens_per_round(ours):.2f} tokens per round "
          f"at K={KMAX}")
    assert tokens >= 100_000
    assert tokens_per_round(ours) > 1.3, "acceptance too low for the test to exercise the rejection sampler"
    tested = {0: [], 1: []}
    for c, cfg in enumerate(CONFIGS):
        rows = slice(c * seqs, (c + 1) * seqs)
        for pos in range(1, new):
            table = contingency([o["output_ids"][pos] for o in plain[rows]], [o["output_ids"][pos] for o in ours[rows]])
            p_value = chi2_contingency(table)[1] if table.shape[1] > 1 else 1.0
            tested[min(c, 1)].append((p_value, cfg, pos))
    print("CONFIGS[0] vs plain (not asserted):", [f"{p:.2e}" for p, _, _ in tested[0]])
    worst = sorted(tested[1], key=lambda w: w[0])
    print("smallest p-values (asserted):", [(f"{p:.2e}", cfg, pos) for p, cfg, pos in worst[:5]])
    # 27 tests: a family-wise false alarm below 0.3 %; a wrong sampler gives p far below this with 3400 draws.
    assert worst[0][0] > 1e-4, f"speculative and plain distributions differ: {worst[:3]}"


@pytest.mark.parametrize("plain_k0", ["1", "0"])
def test_top_p_nucleus_at_k0(peaked_model_path, plain_k0):
    """T=0.6, top-p=0.9 at K=0, against plain SGLang. ER_VERL_PLAIN_K0=1: the target's own decode graph and
    er_verl's sampler (``verify.draft_sample``), so this asserts that the sampler keeps SGLang's nucleus.
    ER_VERL_PLAIN_K0=0: SGLang's own one-token TARGET_VERIFY (extend attention kernel) and SGLang's sampler, no
    er_verl sampling at all; its p-values are printed (the control for the K=3 top-p 0.9 finding), not asserted."""
    from scipy.stats import chi2_contingency

    n, new = 2560, 10
    sampling = [{"temperature": 0.6, "top_p": 0.9, "max_new_tokens": new, "ignore_eos": True}] * n
    prompts = [PROMPTS[0]] * n
    plain = run(peaked_model_path, prompts, sampling)
    ours = run(peaked_model_path, prompts, sampling, spec=("k", 0), ER_VERL_PLAIN_K0=plain_k0)
    p_values = []
    for pos in range(1, new):
        table = contingency([o["output_ids"][pos] for o in plain], [o["output_ids"][pos] for o in ours])
        p_values.append(chi2_contingency(table)[1] if table.shape[1] > 1 else 1.0)
    print(f"K=0, ER_VERL_PLAIN_K0={plain_k0}, T=0.6 top-p 0.9: p per position 2..{new}: "
          + ", ".join(f"{p:.2e}" for p in p_values), flush=True)
    if plain_k0 == "1":
        assert min(p_values) > 1e-4, f"er_verl's sampler at K=0 differs from plain SGLang: {p_values}"


def test_top_p_boundary_speculation_equals_sglang_own_verify_pass(peaked_model_path):
    """T=0.6, top-p=0.9 is where K=3 and plain decoding differ (positions 7-10) on this model, and so does SGLang's
    own one-token TARGET_VERIFY step (test_top_p_nucleus_at_k0[0]): the verify pass's extend attention kernel
    rounds differently from the decode kernel, and a nucleus that sits ~0.002 below 0.9 moves. Here K=3 is
    compared with that SGLang verify path (same kernel family, SGLang's sampler): they must agree."""
    from scipy.stats import chi2_contingency

    n, new = 2560, 10
    sampling = [{"temperature": 0.6, "top_p": 0.9, "max_new_tokens": new, "ignore_eos": True}] * n
    prompts = [PROMPTS[0]] * n
    sglang_verify = run(peaked_model_path, prompts, sampling, spec=("k", 0), ER_VERL_PLAIN_K0="0")
    ours = run(peaked_model_path, prompts, sampling, spec=("k", KMAX))
    p_values = []
    for pos in range(1, new):
        table = contingency([o["output_ids"][pos] for o in sglang_verify], [o["output_ids"][pos] for o in ours])
        p_values.append(chi2_contingency(table)[1] if table.shape[1] > 1 else 1.0)
    print(f"K={KMAX} vs SGLang's one-token verify, T=0.6 top-p 0.9: p per position 2..{new}: "
          + ", ".join(f"{p:.2e}" for p in p_values) + f"; {tokens_per_round(ours):.2f} tokens per round", flush=True)
    assert min(p_values) > 1e-4, f"K={KMAX} differs from SGLang's own verify pass: {p_values}"


def test_verl_spec_fields_count_what_sglang_counts(peaked_model_path):
    """verl's per-sample spec fields (rollout/metrics.py on real meta_info) of a forced K=3 run: every round
    drafted K tokens, the worker's rounds equal SGLang's verify passes (so a round the overlap scheduler
    launched after a request's last one is not counted), and accepted drafts lie in 0..drafted."""
    from er_verl.rollout.metrics import spec_extra_fields

    n, k = 512, KMAX
    sampling = [{"temperature": 1.0, "max_new_tokens": 10 + i % 31, "ignore_eos": True} for i in range(n)]
    outputs = run(peaked_model_path, [PROMPTS[i % len(PROMPTS)] for i in range(n)], sampling, spec=("k", k))
    fields = [spec_extra_fields(o["meta_info"], True) for o in outputs]
    for f, o in zip(fields, outputs):
        assert f["spec_num_verify_steps"] == o["meta_info"]["spec_verify_ct"] > 0, (f, o["meta_info"])
        assert f["spec_num_draft_tokens"] == k * f["spec_num_verify_steps"], f
        assert 0 <= f["spec_num_accepted_tokens"] <= f["spec_num_draft_tokens"], f
    drafted = sum(f["spec_num_draft_tokens"] for f in fields)
    accepted = sum(f["spec_num_accepted_tokens"] for f in fields)
    print(f"verl spec fields over {len(fields)} samples: {drafted} drafted, {accepted} accepted "
          f"(rate {accepted / drafted:.3f})", flush=True)
    assert accepted > 0


def test_long_tailed_rollout_with_abort_keeps_kv_accounting(peaked_model_path):
    """1024 sequences, output lengths long-tailed up to 2048 tokens, the controller choosing K (gate always);
    64 requests of a second wave aborted mid-flight. SGLang asserts its KV/slot invariants at every busy
    step (SGLANG_ENABLE_STRICT_MEM_CHECK_DURING_BUSY) and raises on a leak when idle (its default);
    every finished request returns all its tokens with one log-prob each, every aborted one what it made."""
    rng = np.random.default_rng(0)
    lengths = np.minimum(2048, np.maximum(16, rng.lognormal(5.0, 1.0, 1024))).astype(int).tolist()
    cfg = EfficientConfig(max_draft_len=KMAX, gate="always")
    eng = engine(peaked_model_path, spec=("cfg", cfg), SGLANG_ENABLE_STRICT_MEM_CHECK_DURING_BUSY="1")
    try:
        sampling = [{"temperature": 1.0, "top_p": 0.95, "max_new_tokens": n, "ignore_eos": True} for n in lengths]
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(len(lengths))]
        outs = eng.generate(input_ids=prompts, sampling_params=sampling, return_logprob=True)
        for o, n in zip(outs, lengths):
            assert len(o["output_ids"]) == n and len(o["meta_info"]["output_token_logprobs"]) == n
        print(f"1024 sequences, {sum(lengths)} tokens, {tokens_per_round(outs):.2f} tokens per round, "
              f"longest {max(lengths)}")

        rids = [f"abort-{i:04d}" for i in range(128)]  # equal widths: SGLang aborts every rid with the prefix

        async def wave():
            task = eng.async_generate(input_ids=[PROMPTS[0]] * 128, rid=rids, return_logprob=True,
                                      sampling_params={"temperature": 1.0, "max_new_tokens": 1024, "ignore_eos": True})
            gen = asyncio.ensure_future(task)
            await asyncio.sleep(0.5)
            for rid in rids[::2]:
                eng.tokenizer_manager.abort_request(rid)
            return await gen

        wave_out = eng.loop.run_until_complete(wave())
        aborted = [o for o in wave_out if o["meta_info"]["finish_reason"]["type"] == "abort"]
        assert aborted, "no request was aborted (the wave finished before the abort)"
        for o in wave_out:
            n = len(o["output_ids"])
            assert len(o["meta_info"]["output_token_logprobs"]) == n
            assert n == 1024 or o in aborted
        print(f"abort wave: {len(aborted)} aborted, made {[len(o['output_ids']) for o in aborted[:6]]} tokens")

        import time

        time.sleep(2)  # idle: SGLang's idle check raises on a KV or slot leak
        again = eng.generate(input_ids=PROMPTS[1], sampling_params={"max_new_tokens": 8, "ignore_eos": True})
        assert len(again["output_ids"]) == 8
    finally:
        eng.shutdown()


def test_injected_faults_fall_back_to_plain_decoding(peaked_model_path):
    """The 3rd speculative round raises, and the requant after the first release/resume fails: both times
    the generation completes plainly (no draft accepted) until the next good requant brings speculation back.
    (SGLang reports proposed drafts as verify passes × Kmax, K=0 steps included, so accepted drafts are
    the signal.)"""
    sampling = {"temperature": 1.0, "max_new_tokens": 64, "ignore_eos": True}
    eng = engine(peaked_model_path, spec=("k", KMAX), ER_VERL_FAULT="round@3,requant@2",
                 engine_kw={"enable_memory_saver": True, "enable_weights_cpu_backup": True})
    drafts = lambda outs: sum(o["meta_info"].get("spec_num_correct_drafts", 0) or 0 for o in outs)  # noqa: E731
    try:
        first = eng.generate(input_ids=PROMPTS, sampling_params=sampling)  # round 3 raises: plain from there
        assert all(len(o["output_ids"]) == 64 for o in first)
        after_round_fault = eng.generate(input_ids=PROMPTS, sampling_params=sampling)
        assert all(len(o["output_ids"]) == 64 for o in after_round_fault)
        assert drafts(after_round_fault) == 0, "speculation went on after a failed round (before any weight sync)"
        eng.release_memory_occupation()
        eng.resume_memory_occupation()  # requant #2 raises: still plain
        after_requant_fault = eng.generate(input_ids=PROMPTS, sampling_params=sampling)
        assert all(len(o["output_ids"]) == 64 for o in after_requant_fault) and drafts(after_requant_fault) == 0
        eng.release_memory_occupation()
        eng.resume_memory_occupation()  # requant #3 succeeds: speculation is back
        recovered = eng.generate(input_ids=PROMPTS, sampling_params=sampling)
        assert drafts(recovered) > 0, "speculation did not come back after a good requant"
        print(f"drafts accepted: first {drafts(first)}, after round fault {drafts(after_round_fault)}, after "
              f"requant fault {drafts(after_requant_fault)}, recovered {drafts(recovered)}")
    finally:
        eng.shutdown()


@pytest.mark.parametrize("fault", ["capture@1", "capture@4"])
def test_oom_in_graph_capture_falls_back(peaked_model_path, fault):
    """ER_VERL_FAULT: a real allocator OOM inside stream capture of capture@1 the drafter's decode graphs, or
    capture@4 the K=1 verify state's graphs (order in faults.py). The launch succeeds with a warning. capture@4:
    K=3 still speculates, a batch asking for K=1 decodes plainly (the next lower prepared K is 0). capture@1:
    speculation is off for the server (no eager drafting), both batches decode plainly."""
    sampling = {"temperature": 1.0, "max_new_tokens": 64, "ignore_eos": True}
    eng = engine(peaked_model_path, spec=("k", KMAX), ER_VERL_FAULT=fault)
    drafts = lambda outs: sum(o["meta_info"].get("spec_num_correct_drafts", 0) or 0 for o in outs)  # noqa: E731
    try:
        at_kmax = eng.generate(input_ids=PROMPTS, sampling_params=sampling)
        print(f"{fault}: K={KMAX} batch accepted {drafts(at_kmax)} drafts", flush=True)
        assert all(len(o["output_ids"]) == 64 for o in at_kmax)
        assert drafts(at_kmax) == 0 if fault == "capture@1" else drafts(at_kmax) > 0
        at_k1 = eng.generate(input_ids=PROMPTS, sampling_params={**sampling, "custom_params": {"er_k": 1}})
        print(f"{fault}: K=1 batch accepted {drafts(at_k1)} drafts", flush=True)
        assert all(len(o["output_ids"]) == 64 for o in at_k1)
        assert drafts(at_k1) == 0, f"a batch asking for K=1 speculated after {fault}"
    finally:
        eng.shutdown()
