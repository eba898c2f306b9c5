import sys, torch
sys.path[:0] = ["."]  # run from the repo root; gate_up_proj at M = 32, committed kernel or $SRC
from er_verl.draft import decode_gemm as dg, quantize
import os
if os.environ.get('SRC'):
    dg._SOURCE = dg.Path(os.environ['SRC'])
n, k = 24576, 4096
w = (torch.randn(n, k, device="cuda") * 0.02).bfloat16()
q, s, z = quantize.rtn_int4(w, dg.GROUP, scale_dtype=torch.bfloat16)
qw, sz = dg.pack(q.t(), s.t().contiguous(), z.t().contiguous())
for m in (32,):
    x = torch.randn(m, k, device="cuda").bfloat16()
    for _ in range(3):
        dg.gemm(x, qw, sz)
torch.cuda.synchronize()
