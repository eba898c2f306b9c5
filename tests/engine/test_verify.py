"""The engine's batched round sampler emits exactly the target's filtered distribution p.

Each distribution case runs NUM_ROWS independent rows per parameter group on one fixed set of
logits (the "model" ignores context, so every reached position j must be distributed as p_j);
num_draft is ragged across rows (K_b in {0, 1, 2, 3, 3}). Expected distributions come from the
float64 reference `er_verl.control.rejection.filter_probs`, not from the code under test. Seeds
are fixed, so every run draws the same samples.
"""

import ast
import dataclasses
import inspect
from types import SimpleNamespace

import pytest
import torch
from scipy import stats
from torch._subclasses.fake_tensor import (DataDependentOutputException,
                                           DynamicOutputShapeException, FakeTensorMode)

from er_verl.control import rejection
from er_verl.control.rejection import SamplingParams
from er_verl.engine import verify

NUM_ROWS = 100_000        # rows per parameter group: 10^5 draws of the first emitted token
VOCAB, KMAX = 12, 3
CASES = {
    "temperature": SamplingParams(temperature=0.7),
    "top_k": SamplingParams(temperature=1.0, top_k=6),
    "top_p": SamplingParams(temperature=1.3, top_p=0.8),
    "min_p": SamplingParams(temperature=0.9, min_p=0.1),
    "top_k_top_p": SamplingParams(temperature=1.0, top_k=8, top_p=0.9),
    "combined": SamplingParams(temperature=1.2, top_k=10, top_p=0.95, min_p=0.05),
}
GREEDY = SamplingParams(temperature=0.0)
# One batch, one group of rows per parameter set: joint-order, min-p (switches the whole batch to
# SGLang's sequential order) and greedy rows side by side.
MIXED = [CASES["temperature"], CASES["top_k_top_p"], CASES["combined"], GREEDY]


@dataclasses.dataclass
class Round:
    expected: torch.Tensor      # [G, KMAX+1, V] float64 reference p per group
    group: torch.Tensor         # [B] group index of each row
    draft_tokens: torch.Tensor  # [B, KMAX]
    num_draft: torch.Tensor     # [B]
    out: torch.Tensor           # [B, KMAX+1]
    num_emitted: torch.Tensor   # [B]
    num_accepted: torch.Tensor  # [B]


def _logits(seed: int, kmax: int = KMAX) -> tuple[torch.Tensor, torch.Tensor]:
    """Target logits [K+1, V] and draft logits [K, V] that differ enough to reject often."""
    g = torch.Generator().manual_seed(seed)
    target = 2.0 * torch.randn(kmax + 1, VOCAB, generator=g)
    return target, target[:kmax] + 1.5 * torch.randn(kmax, VOCAB, generator=g)


def _tensors(groups: list[SamplingParams], group: torch.Tensor) -> list[torch.Tensor]:
    """Per-row (temperature, top_k, top_p, min_p), each [B], from each row's group."""
    fields = ("temperature", "top_k", "top_p", "min_p")
    return [torch.tensor([getattr(sp, f) for sp in groups])[group] for f in fields]


def _expected(target: torch.Tensor, groups: list[SamplingParams]) -> torch.Tensor:
    """Reference p [G, K+1, V]. SGLang switches every row to the sequential (min-p path) order
    when any row sets min-p; a negligible min_p (1e-12) selects that order in the reference."""
    sequential = any(sp.min_p > 0 for sp in groups)
    return torch.stack([
        rejection.filter_probs(target, dataclasses.replace(sp, min_p=sp.min_p or 1e-12)
                               if sequential and not sp.is_greedy else sp)
        for sp in groups])


def _draft(draft: torch.Tensor, groups, group: torch.Tensor, g: torch.Generator):
    """Draft tokens [B, K] ~ q and q [B, K, V]. q goes through the code under test once per
    (group, position), in one batch as the engine would; tokens are drawn here by inverse CDF
    (draft_sample's own draws have their own test)."""
    kmax = draft.shape[0]
    rows = torch.arange(len(groups)).repeat_interleave(kmax)                    # [G*K]
    q = verify.filter_probs(draft.repeat(len(groups), 1), *_tensors(groups, rows))
    q = q.view(len(groups), kmax, VOCAB)[group]                                 # [B, K, V]
    u = torch.rand(*q.shape[:2], 1, generator=g)
    tokens = torch.searchsorted(q.cumsum(-1), u * q.sum(-1, keepdim=True), right=True)
    return tokens.squeeze(-1).clamp_max(VOCAB - 1), q


def _round(groups, seed=2, kmax=KMAX, num_draft=None, accept_all=False) -> Round:
    target, draft = _logits(seed, kmax)
    group = torch.arange(NUM_ROWS * len(groups)) % len(groups)
    batch = group.numel()
    g = torch.Generator().manual_seed(seed + 1)
    tokens, q = _draft(draft, groups, group, g)
    if num_draft is None:                                  # ragged: K_b in {0, 1, 2, 3, 3}
        num_draft = (torch.arange(batch) // len(groups) % 5).clamp_max(kmax)
    uniforms = torch.rand(batch, kmax + 1, generator=g)
    if accept_all:
        uniforms.zero_()
    out, num_emitted, num_accepted = verify.sample_round(
        target.expand(batch, -1, -1), q, tokens, num_draft, *_tensors(groups, group), uniforms, g)
    return Round(_expected(target, groups), group, tokens, num_draft, out, num_emitted,
                 num_accepted)


def _chi2_pvalue(samples: torch.Tensor, p: torch.Tensor) -> float:
    """Goodness of fit of samples to p [V]; 0 if any sample falls where p = 0."""
    p = p.double() / p.double().sum()
    counts = torch.bincount(samples, minlength=VOCAB).double()
    if counts[p == 0].sum() > 0:
        return 0.0
    expected = p * counts.sum()
    big = expected >= 5
    obs = torch.cat([counts[big], counts[~big].sum(0, keepdim=True)]).numpy()
    exp = torch.cat([expected[big], expected[~big].sum(0, keepdim=True)]).numpy()
    keep = exp > 0
    return stats.chisquare(obs[keep], exp[keep]).pvalue if keep.sum() > 1 else 1.0


def _matches(samples: torch.Tensor, p: torch.Tensor) -> bool:
    """Chi-square p-value > 1e-3 and total variation < 0.01 against p [V]."""
    counts = torch.bincount(samples, minlength=VOCAB).double()
    tv = 0.5 * float((counts / counts.sum() - p).abs().sum())
    return _chi2_pvalue(samples, p) > 1e-3 and tv < 0.01


def _assert_well_formed(r: Round) -> None:
    """1 <= num_emitted = num_accepted + 1 <= K_b + 1; accepted prefix = drafts; −1 after."""
    assert torch.equal(r.num_emitted, r.num_accepted + 1)
    assert bool((r.num_accepted <= r.num_draft).all())
    pos = torch.arange(r.out.shape[1])[None]
    assert torch.equal(r.out == -1, pos >= r.num_emitted[:, None])
    accepted = pos[:, :-1] < r.num_accepted[:, None]
    assert torch.equal(r.out[:, :-1][accepted], r.draft_tokens[accepted])


@pytest.mark.parametrize("name", [*CASES, "mixed"])
def test_first_and_second_emitted_tokens_have_the_target_distribution(name):
    groups = MIXED if name == "mixed" else [CASES[name]]
    r = _round(groups)
    _assert_well_formed(r)
    for i, sp in enumerate(groups):
        rows, p = r.group == i, r.expected[i]
        rate = r.num_accepted[rows].sum() / r.num_draft[rows].sum()
        assert sp.is_greedy or 0.2 < float(rate) < 0.9, "acceptance must be non-trivial"
        assert _matches(r.out[rows, 0], p[0])
        second = rows & (r.num_accepted >= 1)          # position 1 is emitted
        assert second.sum() >= 40_000
        assert _matches(r.out[second, 1], p[1])
        for j in range(2, KMAX + 1):                   # fewer draws: chi-square only
            assert _chi2_pvalue(r.out[rows & (r.num_accepted >= j), j], p[j]) > 1e-3


@pytest.mark.parametrize("name", CASES)
def test_recovering_from_p_instead_of_the_residual_fails(name, monkeypatch):
    monkeypatch.setattr(verify, "_residual", lambda p_j, q_j: p_j)
    r = _round([CASES[name]])
    assert not _matches(r.out[:, 0], r.expected[0, 0])


def test_accepting_every_draft_token_fails():
    r = _round([CASES["temperature"]], accept_all=True)
    assert torch.equal(r.num_accepted, r.num_draft)
    assert not _matches(r.out[:, 0], r.expected[0, 0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_greedy_rows_emit_step_by_step_argmax_decoding(dtype):
    """Greedy rows (T=0 and top_k=1), mixed with min-p sampling rows, on per-row logits."""
    batch, vocab, kmax = 3000, 50, 4
    g = torch.Generator().manual_seed(0)
    target = (3 * torch.randn(batch, kmax + 1, vocab, generator=g)).to(dtype)
    draft = target[:, :kmax].float() + 1.5 * torch.randn(batch, kmax, vocab, generator=g)
    kind = torch.arange(batch) % 3                     # 0: T=0, 1: top_k=1 at T=0.8, 2: sampled
    temperature = torch.where(kind == 0, 0.0, 0.8)
    top_k = torch.where(kind == 1, 1, -1)
    top_p, min_p = torch.ones(batch), torch.where(kind == 2, 0.1, 0.0)
    per_draft = [x.repeat_interleave(kmax) for x in (temperature, top_k, top_p, min_p)]
    tokens, q = verify.draft_sample(draft.view(-1, vocab), *per_draft, g)
    tokens, q = tokens.view(batch, kmax), q.view(batch, kmax, vocab)
    num_draft = torch.arange(batch) % (kmax + 1)
    out, num_emitted, num_accepted = verify.sample_round(
        target, q, tokens, num_draft, temperature, top_k, top_p, min_p,
        torch.rand(batch, kmax + 1, generator=g), g)
    argmax = target.float().argmax(-1)                                          # [B, K+1]
    in_range = torch.arange(kmax)[None] < num_draft[:, None]
    agree = ((tokens == argmax[:, :kmax]) & in_range).long().cumprod(-1).sum(-1)
    greedy = kind < 2
    assert torch.equal(tokens[greedy], draft.argmax(-1)[greedy])      # greedy drafter: argmax
    assert torch.equal(num_accepted[greedy], agree[greedy])
    assert 0.3 < float(agree[greedy].sum() / num_draft[greedy].sum()) < 0.9
    emitted = torch.arange(kmax + 1)[None] < num_emitted[:, None]
    assert torch.equal(out[greedy], torch.where(emitted, argmax, -1)[greedy])


@pytest.mark.parametrize("kmax", [0, KMAX])
def test_zero_drafts_is_a_plain_sample(kmax):
    """num_draft = 0 (or Kmax = 0): one token from p_0; draft inputs are never read."""
    target, _ = _logits(4, kmax)
    batch, sp = NUM_ROWS, CASES["combined"]
    garbage_q = torch.full((batch, kmax, VOCAB), float("nan"))
    garbage_x = torch.full((batch, kmax), -1)
    g = torch.Generator().manual_seed(6)
    out, num_emitted, num_accepted = verify.sample_round(
        target.expand(batch, -1, -1), garbage_q, garbage_x, torch.zeros(batch, dtype=torch.int32),
        *_tensors([sp], torch.zeros(batch, dtype=torch.long)),
        torch.rand(batch, kmax + 1, generator=g), g)
    assert bool((num_accepted == 0).all()) and bool((num_emitted == 1).all())
    assert bool((out[:, 1:] == -1).all())
    assert _matches(out[:, 0], rejection.filter_probs(target[0], sp))


def test_ragged_rows_are_well_formed_and_capped_at_their_k():
    r = _round([CASES["top_p"]], seed=3)
    _assert_well_formed(r)
    for k in range(KMAX + 1):
        rows = r.num_draft == k
        assert int(r.num_emitted[rows].max()) == k + 1
        assert bool((r.out[rows, k + 1:] == -1).all())


@pytest.mark.parametrize("name", CASES)
def test_agrees_in_distribution_with_the_reference_sampler(name):
    """Same logits and draft tokens through both samplers: the joint law of (num_accepted,
    last emitted token) agrees (two-sample chi-square)."""
    sp = CASES[name]
    r = _round([sp], seed=7, num_draft=torch.full((NUM_ROWS,), KMAX))
    target, draft = _logits(7)
    ref_out, ref_accepted = rejection.rejection_sample_batch(
        target.double().expand(NUM_ROWS, -1, -1), draft.double().expand(NUM_ROWS, -1, -1),
        r.draft_tokens, sp, torch.Generator().manual_seed(8))
    ref_last = ref_out.gather(1, ref_accepted[:, None]).squeeze(1)
    last = r.out.gather(1, r.num_accepted[:, None]).squeeze(1)
    table = torch.stack([torch.bincount(a * VOCAB + x, minlength=(KMAX + 1) * VOCAB)
                         for a, x in ((r.num_accepted, last), (ref_accepted, ref_last))])
    table = table[:, table.sum(0) > 0].numpy()
    assert stats.chi2_contingency(table).pvalue > 1e-3


def test_filter_matches_the_reference_row_by_row():
    logits = 2 * torch.randn(len(MIXED), VOCAB, generator=torch.Generator().manual_seed(1))
    ours = verify.filter_probs(logits, *_tensors(MIXED, torch.arange(len(MIXED))))
    for i in range(len(MIXED)):      # a min-p row in the batch: every row in sequential order
        assert torch.allclose(ours[i].double(), _expected(logits[i:i + 1], MIXED)[i, 0], atol=1e-6)
    joint = [CASES[n] for n in ("temperature", "top_k", "top_p", "top_k_top_p")]
    ours = verify.filter_probs(logits[:4], *_tensors(joint, torch.arange(4)))
    for i, sp in enumerate(joint):   # no min-p row: top-k and top-p act jointly
        assert torch.allclose(ours[i].double(), rejection.filter_probs(logits[i], sp), atol=1e-6)


def test_unfiltered_fast_path_equals_the_full_filter():
    logits = torch.randn(64, VOCAB, generator=torch.Generator().manual_seed(2))
    params = _tensors([SamplingParams(temperature=0.6), GREEDY], torch.arange(64) % 2)
    assert torch.allclose(verify.filter_probs(logits, *params, need_filter=False),
                          verify.filter_probs(logits, *params), atol=1e-7)


def test_target_logprobs_match_sglang_spec_v2_logprobs():
    """Against sglang/srt/layers/utils/logprob.py `compute_spec_v2_logprobs` itself."""
    logprob = pytest.importorskip("sglang.srt.layers.utils.logprob")
    batch, g = 6, torch.Generator().manual_seed(3)
    logits = 3 * torch.randn(batch, KMAX + 1, VOCAB, generator=g)
    tokens = torch.randint(0, VOCAB, (batch, KMAX + 1), generator=g)
    temperature = torch.tensor([0.0, 0.7, 1.0, 1.5, 0.0, 0.3])
    top_k = torch.tensor([-1, 1, -1, 5, -1, -1])
    # SGLang's rewrite (sampling_params.py:144-149): T < 1e-6 → (T=1, top_k=1); −1 → all.
    sglang_t = torch.where(temperature < 1e-6, 1.0, temperature)
    sglang_k = torch.where(temperature < 1e-6, 1, torch.where(top_k == -1, 1 << 30, top_k))
    for rows in (slice(None), [0, 4], [1]):           # mixed, all T=0, all top_k=1 (T=0.7)
        info = SimpleNamespace(is_all_greedy=bool((sglang_k[rows] <= 1).all()),
                               temperatures=sglang_t[rows, None])
        n = len(sglang_t[rows])
        out = SimpleNamespace(next_token_logits=logits[rows].reshape(n * (KMAX + 1), VOCAB))
        accept_index = torch.arange(n * (KMAX + 1)).view(n, KMAX + 1)
        batch_ns = SimpleNamespace(seq_lens=torch.zeros(n), sampling_info=info,
                                   top_logprobs_nums=None, token_ids_logprobs=None)
        logprob.compute_spec_v2_logprobs(batch_ns, out, tokens[rows].reshape(-1), accept_index,
                                         KMAX)
        ours = verify.target_logprobs(logits[rows], tokens[rows], temperature[rows], top_k[rows])
        assert torch.allclose(ours, out.next_token_logprobs, atol=1e-5)


def test_target_logprobs_are_zero_at_padding():
    logits = torch.randn(2, KMAX + 1, VOCAB)
    tokens = torch.tensor([[3, -1, -1, -1], [1, 2, 5, -1]])
    lp = verify.target_logprobs(logits, tokens, torch.tensor([1.0, 0.5]))
    assert torch.equal(lp == 0, tokens == -1)


def test_draft_sample_draws_from_the_q_it_returns():
    sp, g = CASES["combined"], torch.Generator().manual_seed(9)
    _, draft = _logits(9)
    params = _tensors([sp], torch.zeros(NUM_ROWS, dtype=torch.long))
    tokens, q = verify.draft_sample(draft[0].expand(NUM_ROWS, -1), *params, g)
    assert torch.allclose(q[0].double(), rejection.filter_probs(draft[0], sp), atol=1e-6)
    assert _matches(tokens, q[0].double())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("need_filter", [False, True])
def test_sample_tokens_are_draft_samples_tokens_with_fewer_ops(dtype, need_filter):
    """The K=0 sampler draws the same tokens as draft_sample from the same generator state (greedy rows, by
    temperature 0 or top_k 1, included); without filtering it issues at least 5 fewer eager ops."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.ops += 1
            return func(*args, **(kwargs or {}))

    groups = [CASES["temperature"], GREEDY, SamplingParams(temperature=1.0, top_k=1), SamplingParams()]
    if need_filter:
        groups.append(CASES["combined"])
    rows = torch.arange(64) % len(groups)
    params = _tensors(groups, rows)
    logits = (3.0 * torch.randn(64, 1000, generator=torch.Generator().manual_seed(1))).to(dtype)
    counts = {}
    for fn in (verify.sample_tokens, lambda *a: verify.draft_sample(*a)[0]):
        Count.ops = 0
        with Count():
            tokens = fn(logits, *params, torch.Generator().manual_seed(5), need_filter)
        counts[fn] = (tokens, Count.ops)
    (lean, lean_ops), (full, full_ops) = counts.values()
    assert torch.equal(lean, full)
    assert torch.equal(lean[rows == 1], logits[rows == 1].argmax(-1))  # greedy rows take the argmax
    if not need_filter:
        assert lean_ops <= full_ops - 5


def _graph_safe_calls(batch: int = 4):
    """(function, args) for the three entry points, noise pre-drawn (no generator)."""
    g = torch.Generator().manual_seed(0)
    params = _tensors([CASES["combined"], GREEDY], torch.arange(batch) % 2)
    logits = torch.randn(batch, KMAX + 1, VOCAB, generator=g)
    q = torch.softmax(torch.randn(batch, KMAX, VOCAB, generator=g), -1)
    tokens = torch.randint(0, VOCAB, (batch, KMAX), generator=g)
    noise = torch.empty(batch, VOCAB).exponential_(generator=g)
    uniforms, num_draft = torch.rand(batch, KMAX + 1, generator=g), torch.arange(batch)
    out_tokens = torch.cat([tokens, tokens[:, :1]], 1)
    return [(verify.sample_round, (logits, q, tokens, num_draft, *params, uniforms, noise)),
            (verify.draft_sample, (logits[:, 0], *params, noise)),
            (verify.sample_tokens, (logits[:, 0], *params, noise, False)),
            (verify.target_logprobs, (logits, out_tokens, params[0], params[1]))]


def _run_without_data(fn, args) -> None:
    """Run fn on fake tensors (shapes, no values): reading a value on the host (.item(),
    .tolist(), `if tensor`) or a value-dependent shape (nonzero, boolean masks) raises."""
    mode = FakeTensorMode()
    fake_args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
    with mode:
        fn(*fake_args)


def test_no_host_sync_and_no_data_dependent_shapes():
    for fn, args in _graph_safe_calls():
        _run_without_data(fn, args)
    calls = {node.func.attr for node in ast.walk(ast.parse(inspect.getsource(verify)))
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)}
    assert not calls & {"multinomial", "cpu", "numpy", "synchronize"}


@pytest.mark.parametrize("synced", [lambda x: x * x.sum().item(), lambda x: x[x > 0],
                                    lambda x: x + 1 if x.sum() > 0 else x, lambda x: x.nonzero()])
def test_the_sync_check_catches_host_reads_and_dynamic_shapes(synced):
    with pytest.raises((DataDependentOutputException, DynamicOutputShapeException)):
        _run_without_data(synced, [torch.ones(3)])


def test_traces_as_one_graph():
    """torch.compile(fullgraph=True) raises on a graph break; backend="eager" skips Inductor."""
    for fn, args in _graph_safe_calls():
        eager, traced = fn(*args), torch.compile(fn, fullgraph=True, backend="eager")(*args)
        for a, b in zip(*(x if isinstance(x, tuple) else (x,) for x in (eager, traced))):
            assert torch.equal(a, b)
