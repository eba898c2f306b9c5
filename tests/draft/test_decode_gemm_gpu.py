"""The decode GEMM and its requant kernel on the GPU (gpu marker): against the torch reference."""

import pytest
import torch

from er_verl.draft import decode_gemm as dg
from er_verl.draft.quantize import rtn_int4

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def reference_pack(w: torch.Tensor):
    q, s, z = rtn_int4(w, 128, scale_dtype=torch.bfloat16)
    return dg.pack(q.t(), s.t().contiguous(), z.t().contiguous())


def nan_out(m: int, n: int) -> torch.Tensor:
    return torch.full((m, n), float("nan"), device="cuda", dtype=torch.bfloat16)


@pytest.mark.parametrize("n,k", [(64, 128), (4096, 4096), (1040, 12288)])
def test_requant_kernel_is_bit_identical_to_pack_of_rtn_and_in_place(n, k):
    w = (torch.randn(n, k, device="cuda") * 0.02).bfloat16()
    w[0, :128] = 0  # an all-zero group
    w[1, :128] = -0.5  # negative only
    w[2, 128:256] = 3.0  # positive constant
    w[3, :] = torch.linspace(-1, 1, k, device="cuda").bfloat16()
    qweight = torch.empty(n, k // 8, dtype=torch.int32, device="cuda")
    sz = torch.empty(n, k // 128, dtype=torch.int32, device="cuda")
    ptrs = (qweight.data_ptr(), sz.data_ptr())
    dg.requantize_(qweight, sz, w)
    want = reference_pack(w)
    assert torch.equal(qweight, want[0]) and torch.equal(sz, want[1])
    assert (qweight.data_ptr(), sz.data_ptr()) == ptrs


@pytest.mark.parametrize("m", [1, 2, 7, 8, 9, 16, 31, 32, 33, 70])
def test_gemm_equals_x_times_dequantized_weight(m):
    n, k = 1024, 4096
    w = (torch.randn(n, k, device="cuda") * 0.02).bfloat16()
    qweight, sz = reference_pack(w)
    x = torch.randn(m, k, device="cuda").bfloat16()
    want = x.float() @ dg.dequantize(qweight, sz).t()
    got = dg.gemm(x, qweight, sz, nan_out(m, n)).float()  # every output written, none left from an earlier call
    assert got.shape == (m, n)
    rel = ((got - want).norm() / want.norm()).item()
    assert rel < 4e-3, f"relative error {rel:.2e} at m={m}"  # bf16 output rounding is ~2e-3


# Warps with no chunk (K = 128: 2 chunks for 16 warps), tiles not a multiple of the grid, K = 12288, a tiny
# grid whose blocks each stream many tiles, and every block shape at every M tile count (NT = 1..4; at NT > 2 a
# block of 8 warps reduces in two passes): 16 warps for N <= 4096, 8 above, and at M > 8 2 or 4 tiles per block
# for N <= 4096 and N >= 16384 (1040 and 16400 rows: a tile count those do not divide, one tile per block).
@pytest.mark.parametrize("n,k,blocks", [(64, 128, 0), (1040, 12288, 0), (4096, 4096, 3), (6144, 1152, 7),
                                         (24576, 4096, 0), (16448, 128, 5), (16400, 256, 0)])
@pytest.mark.parametrize("m", [1, 8, 16, 20, 32])
def test_gemm_shapes_and_grids(n, k, blocks, m):
    w = (torch.randn(n, k, device="cuda") * 0.02).bfloat16()
    qweight, sz = reference_pack(w)
    x = torch.randn(m, k, device="cuda").bfloat16()
    want = x.float() @ dg.dequantize(qweight, sz).t()
    got = dg.gemm(x, qweight, sz, nan_out(m, n), blocks=blocks).float()
    rel = ((got - want).norm() / want.norm()).item()
    assert rel < 4e-3, f"relative error {rel:.2e} at m={m}, n={n}, k={k}, blocks={blocks}"


def test_gemm_replays_in_a_cuda_graph_and_follows_requant():
    n, k, m = 2048, 4096, 4
    w = (torch.randn(n, k, device="cuda") * 0.02).bfloat16()
    qweight = torch.empty(n, k // 8, dtype=torch.int32, device="cuda")
    sz = torch.empty(n, k // 128, dtype=torch.int32, device="cuda")
    dg.requantize_(qweight, sz, w)
    x = torch.randn(m, k, device="cuda").bfloat16()
    y = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
    dg.gemm(x, qweight, sz, y)  # warm (compiles the library)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        dg.gemm(x, qweight, sz, y)
    graph.replay()
    assert torch.equal(y, dg.gemm(x, qweight, sz))
    w2 = (torch.randn(n, k, device="cuda") * 0.02).bfloat16()
    dg.requantize_(qweight, sz, w2)  # new weights, same buffers: the graph sees them
    graph.replay()
    want = x.float() @ dg.dequantize(qweight, sz).t()
    assert ((y.float() - want).norm() / want.norm()).item() < 4e-3
