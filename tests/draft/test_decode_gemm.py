"""The decode GEMM's packing (CPU): round trips, the word layout, and an emulation of the kernel's MMAs."""

import pytest
import torch

from er_verl.draft import decode_gemm as dg
from er_verl.draft.quantize import dequantize_int4, rtn_int4


def codes(n: int = 32, k: int = 256, seed: int = 0):
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(seed)).bfloat16()
    q, s, z = rtn_int4(w, 128, scale_dtype=torch.bfloat16)
    return w, (q.t().contiguous(), s.t().contiguous(), z.t().contiguous())


def test_pack_unpack_round_trip_and_dequantize_equals_rtn():
    w, (q, s, z) = codes()
    qweight, sz = dg.pack(q, s, z)
    assert qweight.shape == (32, 32) and qweight.dtype == torch.int32 and sz.shape == (32, 2)
    for got, want in zip(dg.unpack(qweight, sz), (q, s, z)):
        assert torch.equal(got, want)
    assert torch.equal(dg.dequantize(qweight, sz), dequantize_int4(*rtn_int4(w, 128, scale_dtype=torch.bfloat16)))


def test_each_word_holds_the_documented_rows_and_k():
    _, (q, s, z) = codes()
    words = (dg.pack(q, s, z)[0].to(torch.int64) & 0xFFFFFFFF).view(2, 4, 32, 4)  # [tile, chunk, lane, word]
    for tile, chunk, lane, step in [(0, 0, 0, 0), (1, 3, 31, 3), (0, 2, 13, 1), (1, 1, 6, 2)]:
        word, g, t = int(words[tile, chunk, lane, step]), lane // 4, lane % 4
        k0 = 64 * chunk + 16 * t + 4 * step
        for p, (row, k) in enumerate([(g, k0), (g + 8, k0), (g, k0 + 2), (g + 8, k0 + 2)]):
            assert (word >> (4 * p)) & 0xF == q[16 * tile + row, k]
            assert (word >> (16 + 4 * p)) & 0xF == q[16 * tile + row, k + 1]


def emulate_kernel(x: torch.Tensor, qweight: torch.Tensor, sz: torch.Tensor) -> torch.Tensor:
    """The .cu kernel's arithmetic in float64: A fragments unpacked from each lane's words exactly as
    `code_pair` does, B fragments from the addresses each lane loads, MMA m16n8k16 semantics."""
    m, k = x.shape
    n = qweight.shape[0]
    words = (qweight.to(torch.int64) & 0xFFFFFFFF).view(n // 16, k // 64, 32, 4)
    szb = (sz.to(torch.int64) & 0xFFFFFFFF).view(n // 16, k // 128, 16)
    bf16 = lambda bits: torch.tensor([bits], dtype=torch.int32).view(torch.float32).item()  # noqa: E731
    y = torch.zeros(m, n, dtype=torch.float64)
    xp = torch.zeros(8, k, dtype=torch.float64)
    for tile in range(n // 16):
        for chunk in range(k // 64):
            for j in range(0, m, 8):
                xp.zero_()
                xp[: min(8, m - j)] = x[j:j + 8].double()
                d = torch.zeros(16, 8, dtype=torch.float64)
                for step in range(4):
                    a = torch.zeros(16, 16, dtype=torch.float64)
                    b = torch.zeros(16, 8, dtype=torch.float64)
                    for lane in range(32):
                        g, t, word = lane // 4, lane % 4, int(words[tile, chunk, lane, step])
                        for p, (row, col) in enumerate([(g, 2 * t), (g + 8, 2 * t), (g, 2 * t + 8), (g + 8, 2 * t + 8)]):
                            zero = bf16(int(szb[tile, chunk // 2, row]) >> 16 << 16)
                            a[row, col] = 128 + ((word >> (4 * p)) & 0xF) - zero
                            a[row, col + 1] = 128 + ((word >> (16 + 4 * p)) & 0xF) - zero
                        base = 64 * chunk + 16 * t + 4 * step  # b0 = x[base, base+1], b1 = x[base+2, base+3]
                        b[2 * t:2 * t + 2, g] = xp[g, base:base + 2]
                        b[2 * t + 8:2 * t + 10, g] = xp[g, base + 2:base + 4]
                    d += a @ b
                scale = torch.tensor([bf16((int(szb[tile, chunk // 2, r]) & 0xFFFF) << 16) for r in range(16)])
                y[j:j + 8, 16 * tile:16 * tile + 16] += (d * scale.double().unsqueeze(1)).t()[: min(8, m - j)]
    return y


@pytest.mark.parametrize("m", [1, 3, 9])
def test_kernel_fragments_compute_x_times_dequantized_weight(m):
    _, (q, s, z) = codes(32, 256, seed=m)
    qweight, sz = dg.pack(q, s, z)
    x = torch.randn(m, 256).bfloat16()
    want = x.double() @ dg.dequantize(qweight, sz).double().t()
    assert torch.allclose(emulate_kernel(x, qweight, sz), want, rtol=1e-9, atol=1e-9)


def test_requantize_in_place_on_cpu_matches_pack_of_rtn():
    w, (q, s, z) = codes()
    qweight, sz = torch.zeros(32, 32, dtype=torch.int32), torch.zeros(32, 2, dtype=torch.int32)
    ptrs = (qweight.data_ptr(), sz.data_ptr())
    dg.requantize_(qweight, sz, w)
    want = dg.pack(q, s, z)
    assert torch.equal(qweight, want[0]) and torch.equal(sz, want[1])
    assert (qweight.data_ptr(), sz.data_ptr()) == ptrs


def test_bad_shapes_are_refused_with_a_sentence():
    _, (q, s, z) = codes()
    with pytest.raises(ValueError, match="multiple of 16"):
        dg.pack(q[:8], s[:8], z[:8])
    with pytest.raises(ValueError, match=r"s and z must be \[N, K/128\]"):
        dg.pack(q, s[:, :1], z)
    with pytest.raises(ValueError, match="bf16 scales"):
        dg.pack(q, s.float(), z)
    with pytest.raises(ValueError, match="needs qweight"):
        dg.requantize_(torch.zeros(32, 16, dtype=torch.int32), torch.zeros(32, 2, dtype=torch.int32),
                       torch.randn(32, 256))
    with pytest.raises(ValueError, match="16-byte aligned rows"):
        dg.gemm(torch.zeros(2, 256), *dg.pack(q, s, z))
