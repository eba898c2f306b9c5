# Run from the repo root after copying w4a16_fold.cuh into recipes/bench/; then
# python3 recipes/bench/w4a16_decode_gemm.py --m 1 8 16 24 32
mk() { printf '#define FOLD_W_FEW %s\n#define FOLD_W_MANY %s\n#define FOLD_TL_FEW %s\n#define FOLD_TL_MANY %s\n#include "w4a16_fold.cuh"\n' "$2" "$3" "$4" "$5" > recipes/bench/prev_fold_$1.cu; }
mk f1 16 8 2 1
mk f2 8 4 2 2
mk f3 4 4 2 4
mk f4 8 8 1 1
mk f5 16 16 1 1
