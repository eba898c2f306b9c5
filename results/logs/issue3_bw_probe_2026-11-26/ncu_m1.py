"""One call each of the committed decode GEMM at M = 1 (qkv_proj, gate_up_proj) and bf16 F.linear, for ncu:
/usr/local/cuda/bin/ncu --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats \
  --section Occupancy --section LaunchStats python3 results/logs/issue3_bw_probe_2026-11-26/ncu_m1.py"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from er_verl.draft import decode_gemm as dg  # noqa: E402

for n, k in ((6144, 4096), (24576, 4096)):
    x = torch.randn(1, k, device="cuda").bfloat16()
    q = torch.randint(0, 2**31 - 1, (n, k // 8), dtype=torch.int32, device="cuda")
    sz = torch.randint(0, 2**31 - 1, (n, k // 128), dtype=torch.int32, device="cuda")
    w = (torch.randn(n, k, device="cuda") * 0.02).bfloat16()
    for _ in range(2):
        dg.gemm(x, q, sz)
        torch.nn.functional.linear(x, w)
torch.cuda.synchronize()
