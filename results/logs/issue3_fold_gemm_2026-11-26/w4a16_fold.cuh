// Experiment: the committed decode GEMM with fewer registers and instructions per chunk, for more resident warps
// at M = 17-32 (Nsight Compute: the committed config there fits one 16-warp block per SM and issues 0.41
// instructions per cycle per scheduler; results/logs/issue3_wgmma_gemm_2026-11-26/).
//
// Two changes to er_verl/draft/csrc/w4a16_decode_gemm.cu, same layout: (1) the group scale is folded into the bf16
// A fragment ((q - z) exact, times s rounded to bf16), so the MMAs accumulate straight into the row sums: no
// fresh fp32 temporaries per chunk and no 4 NT FMAs per tile after them; (2) x is read per k16 step, 8 bytes per
// token group, instead of 32 bytes per token group held for the whole chunk. A variant file sets FOLD_W_FEW /
// FOLD_W_MANY (warps per block, N <= 4096 / wider) and FOLD_TL_FEW / FOLD_TL_MANY (tiles per block) and includes
// this file. Not wired into er_verl.

#define er_w4a16_gemm er_w4a16_gemm_committed
#include "../../er_verl/draft/csrc/w4a16_decode_gemm.cu"
#undef er_w4a16_gemm

namespace {

__device__ __forceinline__ uint32_t mul_bf16x2(uint32_t a, uint32_t b) {
  __nv_bfloat162 x, y;
  memcpy(&x, &a, 4);
  memcpy(&y, &b, 4);
  const __nv_bfloat162 d = __hmul2(x, y);
  uint32_t r;
  memcpy(&r, &d, 4);
  return r;
}

template <int NT, int WARPS, int TILES>
__global__ void __launch_bounds__(32 * WARPS)
    fold_gemm(const __nv_bfloat16* __restrict__ x, const uint4* __restrict__ qweight, const uint32_t* __restrict__ sz,
              __nv_bfloat16* __restrict__ y, int m, int n, int k, int ldx, int ldy) {
  extern __shared__ float partial[];  // [2 rounds][WARPS][32 lanes][4 NT]
  const int chunks = k >> 6, groups = k / kGroup, tile_groups = (n >> 4) / TILES;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const uint2* xg[NT];
#pragma unroll
  for (int j = 0; j < NT; ++j) xg[j] = reinterpret_cast<const uint2*>(x + (size_t)min(g + 8 * j, m - 1) * ldx) + 4 * t;

  int round = 0;
  for (int tg = blockIdx.x; tg < tile_groups; tg += gridDim.x) {
    const uint4* wt = qweight + (size_t)tg * TILES * chunks * 32 + lane;
    const uint32_t* szt = sz + (size_t)tg * TILES * groups * 16;
    float acc[TILES][NT][4] = {};
    for (int c = warp; c < chunks; c += WARPS) {
      uint4 w[TILES];
      uint32_t z0[TILES], z1[TILES], s0[TILES], s1[TILES];
#pragma unroll
      for (int i = 0; i < TILES; ++i) {
        w[i] = load_streaming(wt + ((size_t)i * chunks + c) * 32);
        const uint32_t a = __ldg(szt + (i * groups + (c >> 1)) * 16 + g);
        const uint32_t b = __ldg(szt + (i * groups + (c >> 1)) * 16 + g + 8);
        z0[i] = (a & 0xFFFF0000u) | (a >> 16);
        z1[i] = (b & 0xFFFF0000u) | (b >> 16);
        s0[i] = (a << 16) | (a & 0xFFFFu);
        s1[i] = (b << 16) | (b & 0xFFFFu);
      }
#pragma unroll
      for (int s = 0; s < 4; ++s) {
        uint2 b[NT];  // x[token g + 8j][k of step s]: the lane's 16 k of the chunk, 4 per step
#pragma unroll
        for (int j = 0; j < NT; ++j) b[j] = g + 8 * j < m ? __ldg(xg[j] + 16 * c + s) : make_uint2(0, 0);
#pragma unroll
        for (int i = 0; i < TILES; ++i) {
          const uint32_t word = word_of(w[i], s);
          const uint32_t a0 = mul_bf16x2(code_pair(word, 0, z0[i]), s0[i]);
          const uint32_t a1 = mul_bf16x2(code_pair(word, 1, z1[i]), s1[i]);
          const uint32_t a2 = mul_bf16x2(code_pair(word, 2, z0[i]), s0[i]);
          const uint32_t a3 = mul_bf16x2(code_pair(word, 3, z1[i]), s1[i]);
#pragma unroll
          for (int j = 0; j < NT; ++j) mma_bf16(acc[i][j], a0, a1, a2, a3, b[j].x, b[j].y);
        }
      }
    }
#pragma unroll
    for (int i = 0; i < TILES; ++i, round ^= 1) {  // the committed kernel's cross-warp sum, unchanged
      const int tile = tg * TILES + i;
      float* mine = partial + ((size_t)(round * WARPS + warp) * 32 + lane) * 4 * NT;
#pragma unroll
      for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) mine[4 * j + e] = acc[i][j][e];
      __syncthreads();
      for (int id = threadIdx.x; id < 128 * NT; id += 32 * WARPS) {
        const int l = id / (4 * NT), e = id % (4 * NT), j = e >> 2, ee = e & 3;
        float v = 0.f;
#pragma unroll
        for (int w = 0; w < WARPS; ++w) v += partial[((size_t)(round * WARPS + w) * 32 + l) * 4 * NT + e];
        const int row = tile * 16 + (l >> 2) + (ee >= 2 ? 8 : 0), token = 8 * j + 2 * (l & 3) + (ee & 1);
        if (token < m) y[(size_t)token * ldy + row] = __float2bfloat16(v);
      }
    }
  }
}

template <int NT, int WARPS, int TILES>
cudaError_t launch_fold(const void* x, const void* qweight, const void* sz, void* y, int m, int n, int k, int ldx,
                        int ldy, int blocks, cudaStream_t stream) {
  if ((n / 16) % TILES) return launch_fold<NT, WARPS, 1>(x, qweight, sz, y, m, n, k, ldx, ldy, blocks, stream);
  auto kernel = fold_gemm<NT, WARPS, TILES>;
  const int smem = 2 * WARPS * 32 * 4 * NT * (int)sizeof(float);
  static int fit[kMaxDevices] = {};
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  if (device >= kMaxDevices) return cudaErrorInvalidDevice;
  if (fit[device] == 0) {
    int sms = 0, per_sm = 0;
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    if (err == cudaSuccess) err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, 32 * WARPS, smem);
    if (err != cudaSuccess) return err;
    fit[device] = sms * (per_sm > 0 ? per_sm : 1);
  }
  if (blocks <= 0) blocks = fit[device];
  if (blocks > n / 16 / TILES) blocks = n / 16 / TILES;
  kernel<<<blocks, 32 * WARPS, smem, stream>>>(static_cast<const __nv_bfloat16*>(x), static_cast<const uint4*>(qweight),
                                              static_cast<const uint32_t*>(sz), static_cast<__nv_bfloat16*>(y), m, n, k,
                                              ldx, ldy);
  return cudaGetLastError();
}

}  // namespace

extern "C" int er_w4a16_gemm(const void* x, const void* qweight, const void* sz, void* y, int m, int n, int k,
                             int ldx, int ldy, int blocks, void* stream) {
  if (m < 1 || m > 32 || n % 16 || k % kGroup || ldx % 8) return cudaErrorInvalidValue;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const bool few = n <= 4096;
#define ER_FOLD(NT)                                                                                          \
  return few ? launch_fold<NT, FOLD_W_FEW, FOLD_TL_FEW>(x, qweight, sz, y, m, n, k, ldx, ldy, blocks, s)    \
             : launch_fold<NT, FOLD_W_MANY, FOLD_TL_MANY>(x, qweight, sz, y, m, n, k, ldx, ldy, blocks, s)
  switch ((m + 7) / 8) {
    case 1: ER_FOLD(1);
    case 2: ER_FOLD(2);
    case 3: ER_FOLD(3);
    default: ER_FOLD(4);
  }
#undef ER_FOLD
}
