# Run from the repo root after copying w4a16_wgmma.cuh into recipes/bench/. The first sweep (wg_sweep) used
# WGX_SWAP and no WGX_RT / WGX_XFIXED (an earlier revision of the .cuh: RT 1, no probe); variants
# a: 4/2 warpgroups, b: the same with the descriptor offsets swapped (wrong output: the layout check),
# c: 8/4, d: 2/1. The second sweep (wg2_sweep) used this file as it is:
mk() { printf '#define WGX_FEW %s\n#define WGX_MANY %s\n#define WGX_SWAP 0\n#define WGX_RT %s\n#define WGX_XFIXED %s\n#include "w4a16_wgmma.cuh"\n' "$2" "$3" "$4" "$5" > recipes/bench/prev_wg_$1.cu; }
mk a 4 2 1 0
mk x 4 2 1 1
mk r2 4 2 2 0
mk r2w1 2 1 2 0
mk r2x 4 2 2 1
# Then: python3 recipes/bench/w4a16_decode_gemm.py --m 1 8 16 32 [--layers gate_up_proj qkv_proj]
# ncu (on the host, /usr/local/cuda/bin/ncu): [SRC=recipes/bench/prev_wg_a.cu] ncu --kernel-name regex:gemm
#   --launch-skip 2 --launch-count 1 --section SpeedOfLight --section Occupancy --section WarpStateStats
#   --section SchedulerStats python3 ncu_probe.py
