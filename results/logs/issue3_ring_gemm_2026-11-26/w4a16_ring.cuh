// Experiment: the committed decode GEMM with a per-warp cp.async ring (more weight bytes in flight per SM).
//
// Same layout, same math (tile_chunk), same cross-warp sum as er_verl/draft/csrc/w4a16_decode_gemm.cu; only
// how weights reach the registers differs. There each warp holds one chunk's loads in registers, so the bytes
// in flight per SM are bounded by resident warps (~16-32 KB at M <= 8, ~2.4 TB/s). Here each warp keeps
// STAGES - 1 chunks in flight through cp.async into its own shared-memory slots (a lane only ever reads what it
// copied itself, so no barrier is needed; cp.async.wait_group orders it), with the chunk's group scales and,
// with XRING, its x fragments too. A variant file sets the config and includes this one:
//   #define RING_W_FEW 16 / RING_W_MANY 8: warps per block where N <= 4096 / otherwise; RING_ST: ring stages;
//   RING_TL_FEW / RING_TL_MANY: tiles per block; RING_X 0/1: x through the ring (else __ldg as committed).
// Not wired into er_verl; recipes/bench/w4a16_decode_gemm.py times it beside the committed kernel.

#define er_w4a16_gemm er_w4a16_gemm_committed
#include "../../er_verl/draft/csrc/w4a16_decode_gemm.cu"
#undef er_w4a16_gemm

namespace {

__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool live) {
  const uint32_t d = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(d), "l"(src), "r"(live ? 16 : 0) : "memory");
}

__device__ __forceinline__ void cp_async4(void* dst, const void* src) {
  const uint32_t d = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(d), "l"(src) : "memory");
}

__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }

template <int PENDING>
__device__ __forceinline__ void cp_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(PENDING) : "memory");
}

template <int NT, int TILES, bool XRING>
struct Slot {  // one chunk of one warp: per lane its weight quads, (sz0, sz1) pairs and, with XRING, x fragments
  static constexpr int kW = TILES * 512, kSZ = TILES * 256, kX = XRING ? NT * 1024 : 0, kBytes = kW + kSZ + kX;
};

template <int NT, int WARPS, int STAGES, int TILES, bool XRING>
__global__ void __launch_bounds__(32 * WARPS)
    ring_gemm(const __nv_bfloat16* __restrict__ x, const uint4* __restrict__ qweight, const uint32_t* __restrict__ sz,
              __nv_bfloat16* __restrict__ y, int m, int n, int k, int ldx, int ldy) {
  using S = Slot<NT, TILES, XRING>;
  extern __shared__ __align__(16) unsigned char smem[];
  float* partial = reinterpret_cast<float*>(smem);  // [2 rounds][WARPS][32 lanes][4 NT]
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  unsigned char* ring = smem + 2 * WARPS * 32 * 4 * NT * sizeof(float) + warp * STAGES * S::kBytes;
  const int chunks = k >> 6, groups = k / kGroup, tile_groups = (n >> 4) / TILES;
  const int per_tg = warp < chunks ? (chunks - warp + WARPS - 1) / WARPS : 0;
  const int my_tgs = (int)blockIdx.x < tile_groups ? (tile_groups - blockIdx.x + gridDim.x - 1) / gridDim.x : 0;
  const int items = per_tg * my_tgs;  // this warp's (tile group, chunk) work, in order
  const uint4* xg[NT];
#pragma unroll
  for (int j = 0; j < NT; ++j) xg[j] = reinterpret_cast<const uint4*>(x + (size_t)min(g + 8 * j, m - 1) * ldx) + 2 * t;

  auto issue = [&](int idx) {  // always commits a group (empty past the end), so wait_group counts stay exact
    if (idx < items) {
      const int tg = blockIdx.x + (idx / per_tg) * gridDim.x, c = warp + (idx % per_tg) * WARPS;
      unsigned char* slot = ring + (idx % STAGES) * S::kBytes;
      const uint4* wt = qweight + (size_t)tg * TILES * chunks * 32 + lane;
      const uint32_t* szt = sz + (size_t)tg * TILES * groups * 16;
#pragma unroll
      for (int i = 0; i < TILES; ++i) {
        cp_async16(slot + i * 512 + lane * 16, wt + ((size_t)i * chunks + c) * 32, true);
        const uint32_t* row = szt + (i * groups + (c >> 1)) * 16 + g;
        cp_async4(slot + S::kW + (i * 32 + lane) * 8, row);
        cp_async4(slot + S::kW + (i * 32 + lane) * 8 + 4, row + 8);
      }
      if constexpr (XRING) {
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
          for (int h = 0; h < 2; ++h)
            cp_async16(slot + S::kW + S::kSZ + ((2 * j + h) * 32 + lane) * 16, xg[j] + 8 * c + h, g + 8 * j < m);
      }
    }
    cp_commit();
  };

#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) issue(s);
  int idx = 0, round = 0;
  for (int tg = blockIdx.x; tg < tile_groups; tg += gridDim.x) {
    float acc[TILES][NT][4] = {};
    for (int ci = 0; ci < per_tg; ++ci, ++idx) {
      issue(idx + STAGES - 1);  // into the slot read last iteration (its values are already in use)
      cp_wait<STAGES - 1>();    // item idx has landed
      const unsigned char* slot = ring + (idx % STAGES) * S::kBytes;
      const int c = warp + ci * WARPS;
      uint4 b[NT][2];
#pragma unroll
      for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          if constexpr (XRING) {
            b[j][h] = *reinterpret_cast<const uint4*>(slot + S::kW + S::kSZ + ((2 * j + h) * 32 + lane) * 16);
          } else {
            b[j][h] = g + 8 * j < m ? __ldg(xg[j] + 8 * c + h) : make_uint4(0, 0, 0, 0);
          }
        }
#pragma unroll
      for (int i = 0; i < TILES; ++i) {
        const uint4 w = *reinterpret_cast<const uint4*>(slot + i * 512 + lane * 16);
        const uint2 s2 = *reinterpret_cast<const uint2*>(slot + S::kW + (i * 32 + lane) * 8);
        tile_chunk<NT>(acc[i], w, s2.x, s2.y, b);
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
  cp_wait<0>();
}

template <int NT, int WARPS, int STAGES, int TILES, bool XRING>
cudaError_t launch_ring(const void* x, const void* qweight, const void* sz, void* y, int m, int n, int k, int ldx,
                        int ldy, int blocks, cudaStream_t stream) {
  if ((n / 16) % TILES) return launch_ring<NT, WARPS, STAGES, 1, XRING>(x, qweight, sz, y, m, n, k, ldx, ldy, blocks, stream);
  auto kernel = ring_gemm<NT, WARPS, STAGES, TILES, XRING>;
  constexpr int kThreads = 32 * WARPS;
  const int smem = 2 * WARPS * 32 * 4 * NT * (int)sizeof(float) + WARPS * STAGES * Slot<NT, TILES, XRING>::kBytes;
  static int fit[kMaxDevices] = {};
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  if (device >= kMaxDevices) return cudaErrorInvalidDevice;
  if (fit[device] == 0) {
    int sms = 0, per_sm = 0;
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    if (err == cudaSuccess) err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem);
    if (err != cudaSuccess) return err;
    if (per_sm == 0) return cudaErrorInvalidConfiguration;
    fit[device] = sms * per_sm;
  }
  if (blocks <= 0) blocks = fit[device];
  if (blocks > n / 16 / TILES) blocks = n / 16 / TILES;
  kernel<<<blocks, kThreads, smem, stream>>>(static_cast<const __nv_bfloat16*>(x), static_cast<const uint4*>(qweight),
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
#define ER_RING(NT)                                                                                         \
  return few ? launch_ring<NT, RING_W_FEW, RING_ST, RING_TL_FEW, RING_X>(x, qweight, sz, y, m, n, k, ldx, ldy, blocks, s) \
             : launch_ring<NT, RING_W_MANY, RING_ST, RING_TL_MANY, RING_X>(x, qweight, sz, y, m, n, k, ldx, ldy, blocks, s)
  switch ((m + 7) / 8) {
    case 1: ER_RING(1);
    case 2: ER_RING(2);
    case 3: ER_RING(3);
    default: ER_RING(4);
  }
#undef ER_RING
}
