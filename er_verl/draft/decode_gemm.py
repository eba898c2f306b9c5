"""The drafter's decode GEMM: int4 weights packed for `csrc/w4a16_decode_gemm.cu`, and the call into it.

Packing (pure torch, runs on CPU too), for RTN codes ``q[N, K]`` in [0, 15], group G = 128, in the order
of the tensor cores' m16n8k16 A fragment (the .cu file's header says why):

* ``qweight`` int32 [N/16, K/64, 32, 4] (returned as [N, K/8]): lane l = 4g + t of a 16-row tile, word s
  of a 64-k chunk; with r0 = g, r1 = g + 8, k0 = 16t + 4s its nibble pairs (p, 4 + p) hold
  p = 0: (r0, k0), 1: (r1, k0), 2: (r0, k0 + 2), 3: (r1, k0 + 2), the low nibble at k, the high at k + 1;
* ``sz`` int32 [N/16, K/G, 16] (returned as [N, K/G]): low 16 bits the bf16 scale s, high 16 bits the
  bf16 of 128 + z.

``w[n, k] = (q[n, k] − z[n, k//G]) · s[n, k//G]``, the same RTN weights as the Marlin buffers hold
(`quantize.rtn_int4`). The kernel is compiled with nvcc on first use (``$CUDA_HOME/bin/nvcc`` or nvcc on
PATH) into ``~/.cache/er_verl/`` keyed by the source's hash, and called through ctypes on the current
CUDA stream, so it can be captured in a CUDA graph.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import threading
from pathlib import Path

import torch

from er_verl.draft.quantize import rtn_int4

GROUP = 128
TILE_N = 16  # output rows per tensor-core tile
MAX_M = 32  # tokens per kernel launch (4 MMAs of 8 columns); gemm() splits larger M
_SOURCE = Path(__file__).with_name("csrc") / "w4a16_decode_gemm.cu"
_lib = None


def _to_int32(x: torch.Tensor) -> torch.Tensor:  # int64 holding uint32 bit patterns -> int32, same bits
    return torch.where(x >= 2**31, x - 2**32, x).to(torch.int32)


def _check_codes(q: torch.Tensor, s: torch.Tensor, z: torch.Tensor) -> tuple[int, int]:
    if q.dim() != 2 or q.shape[0] % TILE_N or q.shape[1] % GROUP:
        raise ValueError(
            f"q must be [N, K] with N a multiple of {TILE_N} and K a multiple of {GROUP}; got {tuple(q.shape)}."
        )
    n, k = q.shape
    if tuple(s.shape) != (n, k // GROUP) or tuple(z.shape) != (n, k // GROUP):
        raise ValueError(
            f"s and z must be [N, K/{GROUP}] = [{n}, {k // GROUP}]; got {tuple(s.shape)} and {tuple(z.shape)}."
        )
    if s.dtype != torch.bfloat16:
        raise ValueError(f"s has dtype {s.dtype}; the decode GEMM stores bf16 scales.")
    return n, k


# q[N, K] viewed as [tiles, r (row half), g, chunk, t, s (k16 step), hi (k + 2), e (k + 1)], with
# row = 16 tile + 8 r + g and k = 64 chunk + 16 t + 4 s + 2 hi + e; the packed order is
# [tiles, chunk, g, t, s, (hi, r) = nibble pair p, e].
_CODE_VIEW = (2, 8, -1, 4, 4, 2, 2)
_TO_PACKED = (0, 3, 2, 4, 5, 6, 1, 7)


def pack(
    q: torch.Tensor,  # [N, K] integer codes in [0, 15]
    s: torch.Tensor,  # [N, K/G] bf16 scales
    z: torch.Tensor,  # [N, K/G] integer zero points in [0, 15]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(qweight int32 [N, K/8], sz int32 [N, K/G]) in the kernel's layout (module docstring)."""
    n, k = _check_codes(q, s, z)
    codes = q.to(torch.int64).view(n // TILE_N, *_CODE_VIEW).permute(_TO_PACKED)
    codes = codes.reshape(n // TILE_N, k // 64, 32, 4, 4, 2)  # [tile, chunk, lane, word, p, e]
    shifts = 4 * torch.arange(4, device=q.device, dtype=torch.int64)
    word = (codes[..., 0] << shifts).sum(-1) + (codes[..., 1] << (shifts + 16)).sum(-1)
    zero = (z.to(torch.float32) + 128.0).to(torch.bfloat16)
    scale_bits = s.contiguous().view(torch.int16).to(torch.int64) & 0xFFFF
    zero_bits = zero.view(torch.int16).to(torch.int64) & 0xFFFF
    sz = (scale_bits | (zero_bits << 16)).view(n // TILE_N, TILE_N, k // GROUP).transpose(1, 2)
    return _to_int32(word).reshape(n, k // 8), _to_int32(sz).reshape(n, k // GROUP)


def unpack(
    qweight: torch.Tensor,  # [N, K/8] int32
    sz: torch.Tensor,  # [N, K/G] int32
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of `pack`: (q uint8 [N, K], s bf16 [N, K/G], z uint8 [N, K/G])."""
    n, k = qweight.shape[0], qweight.shape[1] * 8
    bits = (qweight.to(torch.int64) & 0xFFFFFFFF).view(n // TILE_N, k // 64, 32, 4, 1)
    shifts = 4 * torch.arange(4, device=qweight.device, dtype=torch.int64)
    codes = torch.stack(((bits >> shifts) & 0xF, (bits >> (shifts + 16)) & 0xF), dim=-1)
    codes = codes.view(n // TILE_N, k // 64, 8, 4, 4, 2, 2, 2)  # [tile, chunk, g, t, s, hi, r, e]
    q = codes.permute(0, 6, 2, 1, 3, 4, 5, 7).reshape(n, k).to(torch.uint8)
    szb = (sz.to(torch.int64) & 0xFFFFFFFF).view(n // TILE_N, k // GROUP, TILE_N).transpose(1, 2).reshape(n, -1)
    s = _to_int16(szb & 0xFFFF).view(torch.bfloat16)
    z = (_to_int16(szb >> 16).view(torch.bfloat16).float() - 128.0).to(torch.uint8)
    return q, s, z


def _to_int16(x: torch.Tensor) -> torch.Tensor:  # int64 holding uint16 bit patterns -> int16, same bits
    return torch.where(x >= 2**15, x - 2**16, x).to(torch.int16)


def dequantize(qweight: torch.Tensor, sz: torch.Tensor) -> torch.Tensor:  # -> [N, K] fp32
    """The weights the kernel multiplies by: ``(q − z) · s`` in fp32, nn.Linear layout."""
    q, s, z = unpack(qweight, sz)
    per_group = (q.float().unflatten(1, (s.shape[1], GROUP)) - z.float().unsqueeze(2)) * s.float().unsqueeze(2)
    return per_group.flatten(1)


def _nvcc() -> str:
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    for candidate in (os.path.join(cuda_home, "bin", "nvcc"), shutil.which("nvcc")):
        if candidate and os.path.exists(candidate):
            return candidate
    raise RuntimeError(f"nvcc was not found in {cuda_home}/bin or on PATH; the drafter's GEMM needs it once.")


def compiled(source: Path = _SOURCE) -> Path:
    """The shared library built from ``source`` (compiled once per source version; ~10 s)."""
    tag = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    cache = Path(os.environ.get("ER_VERL_CACHE", Path.home() / ".cache" / "er_verl"))
    so = cache / f"{source.stem}_{tag}.so"
    if not so.exists():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = so.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        # sm_90a SASS only: nvcc 13.0 given -arch=sm_90a also built compute_90 PTX, where wgmma is an error
        arch = "-gencode=arch=compute_90a,code=sm_90a"
        cmd = [_nvcc(), "-O3", arch, "-shared", "-Xcompiler", "-fPIC", "-o", str(tmp), str(source)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"nvcc failed on {source}:\n{done.stderr[-2000:]}")
        os.replace(tmp, so)
    return so


def library() -> ctypes.CDLL:
    """The compiled kernel library, loaded once."""
    global _lib
    if _lib is not None:
        return _lib
    so = compiled(_SOURCE)
    lib = ctypes.CDLL(str(so))
    lib.er_w4a16_gemm.restype = ctypes.c_int
    lib.er_w4a16_gemm.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int] * 6 + [ctypes.c_void_p]
    lib.er_w4a16_requant.restype = ctypes.c_int
    lib.er_w4a16_requant.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int] * 3 + [ctypes.c_void_p]
    _lib = lib
    return lib


def gemm(
    x: torch.Tensor,  # [M, K] bf16, unit column stride, 16-byte aligned rows
    qweight: torch.Tensor,  # [N, K/8] int32
    sz: torch.Tensor,  # [N, K/G] int32
    out: torch.Tensor | None = None,  # [M, N] bf16
    blocks: int = 0,
) -> torch.Tensor:
    """``x · dequantize(qweight, sz)ᵀ`` on the GPU, M split into launches of at most 32 rows. No host sync."""
    m, k = x.shape
    n = qweight.shape[0]
    if x.dtype != torch.bfloat16 or x.stride(1) != 1 or x.stride(0) % 8 or x.data_ptr() % 16 or tuple(qweight.shape) != (n, k // 8):
        raise ValueError(
            f"the decode GEMM needs bf16 x [M, K] with unit column stride and 16-byte aligned rows, and qweight "
            f"[N, K/8]; got x {x.dtype} {tuple(x.shape)} strides {x.stride()}, qweight {tuple(qweight.shape)}."
        )
    y = out if out is not None else torch.empty(m, n, dtype=torch.bfloat16, device=x.device)
    lib, stream = library(), torch.cuda.current_stream(x.device).cuda_stream
    for start in range(0, m, MAX_M):
        mm = min(MAX_M, m - start)
        err = lib.er_w4a16_gemm(x[start].data_ptr(), qweight.data_ptr(), sz.data_ptr(), y[start].data_ptr(),
                                mm, n, k, x.stride(0), y.stride(0), blocks, stream)
        if err:
            raise RuntimeError(f"er_w4a16_gemm failed with cudaError {err} (m={mm}, n={n}, k={k}).")
    return y


@torch.no_grad()
def requantize_(
    qweight: torch.Tensor,  # [N, K/8] int32, written in place
    sz: torch.Tensor,  # [N, K/G] int32, written in place
    w: torch.Tensor,  # [N, K] float, nn.Linear layout, on qweight's device
) -> None:
    """``pack(rtn_int4(w))`` written into the existing buffers. No host sync.

    A CUDA bf16 ``w`` takes one CUDA kernel (bit-identical to the torch path; the GPU tests check it);
    anything else (CPU, fp32) the torch reference path.
    """
    n, k = w.shape
    if tuple(qweight.shape) != (n, k // 8) or tuple(sz.shape) != (n, k // GROUP) or w.device != qweight.device:
        raise ValueError(
            f"requantize_ of w {tuple(w.shape)} on {w.device} needs qweight [{n}, {k // 8}] and sz "
            f"[{n}, {k // GROUP}] on the same device; got {tuple(qweight.shape)}, {tuple(sz.shape)} on {qweight.device}."
        )
    if not (w.is_cuda and w.dtype == torch.bfloat16 and w.stride(1) == 1):
        q, s, z = rtn_int4(w, GROUP, scale_dtype=torch.bfloat16)
        packed_q, packed_sz = pack(q.t(), s.t().contiguous(), z.t().contiguous())
        qweight.copy_(packed_q)
        sz.copy_(packed_sz)
        return
    if n % TILE_N or k % GROUP:
        raise ValueError(f"w is [{n}, {k}]; the decode GEMM needs N % {TILE_N} == 0 and K % {GROUP} == 0.")
    err = library().er_w4a16_requant(w.data_ptr(), qweight.data_ptr(), sz.data_ptr(), n, k, w.stride(0),
                                     torch.cuda.current_stream(w.device).cuda_stream)
    if err:
        raise RuntimeError(f"er_w4a16_requant failed with cudaError {err} (n={n}, k={k}).")
