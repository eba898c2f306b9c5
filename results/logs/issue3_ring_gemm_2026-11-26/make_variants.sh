# Run from the repo root after copying w4a16_ring.cuh into recipes/bench/: writes recipes/bench/prev_ring_<name>.cu
# for each "name warps(N<=4096) warps(else) stages tiles(N<=4096) tiles(else) x-through-ring".
mk() { printf '#define RING_W_FEW %s\n#define RING_W_MANY %s\n#define RING_ST %s\n#define RING_TL_FEW %s\n#define RING_TL_MANY %s\n#define RING_X %s\n#include "w4a16_ring.cuh"\n' "$2" "$3" "$4" "$5" "$6" "$7" > recipes/bench/prev_ring_$1.cu; }
mk r1 8 8 4 1 1 0
mk r2 8 8 4 1 1 1
mk r3 4 4 8 1 1 0
mk r4 8 8 4 2 2 0
mk r5 8 8 3 2 2 1
mk r6 16 8 6 1 2 0
