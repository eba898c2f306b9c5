// Experiment: the decode GEMM on Hopper warpgroup MMAs (wgmma), A from registers.
//
// The committed kernel (er_verl/draft/csrc/w4a16_decode_gemm.cu) issues one m16n8k16 mma.sync per 8 tokens per
// 16 rows per 16 k, and every warp reads its own copy of x: at M = 32 that is 4x the MMAs of M = 8 and the
// kernel costs twice as much. A wgmma m64nNk16 covers 64 rows (the four tiles of a warpgroup, one per warp) and
// all N = 8 NT tokens in one instruction, reading x once per warpgroup from shared memory. Its A fragment per
// warp is laid out as mma.sync's, so the packed weights are used as they are: each warp dequantizes its tile's
// fragment (scale folded in, bf16) and the four warps issue the wgmma together.
//
// The packed k order inside a 64-k chunk is permuted (fragment slot 8h + 2t + e of step s holds
// k = 16t + 4s + 2h + e), so x is staged into shared memory in that order: for step s, token group ng and half h,
// a core matrix of 8 tokens x 8 slots (128 B) at ((s NT + ng) 2 + h) 128; K-major, no swizzle.
// Variant files set WGX_FEW / WGX_MANY (warpgroups per block splitting K, N <= 6144 / wider), WGX_SWAP (1: swap
// the descriptor's two byte offsets), WGX_RT (tiles per warp, 1 or 2) and WGX_XFIXED (1: a timing probe that
// always stages x's first chunk, wrong output) and include this file. Not wired into er_verl.

#define er_w4a16_gemm er_w4a16_gemm_committed
#include "../../er_verl/draft/csrc/w4a16_decode_gemm.cu"
#undef er_w4a16_gemm

namespace {

__device__ __forceinline__ uint64_t smem_desc(const void* p, uint32_t lbo, uint32_t sbo) {
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  return (uint64_t)((a & 0x3FFFF) >> 4) | ((uint64_t)(lbo >> 4) << 16) | ((uint64_t)(sbo >> 4) << 32);
}

template <int NT>
struct Wgmma;

template <>
struct Wgmma<1> {
  static __device__ __forceinline__ void run(float (&d)[4], const uint32_t (&a)[4], uint64_t b) {
    asm volatile(
        "wgmma.mma_async.sync.aligned.m64n8k16.f32.bf16.bf16 {%0,%1,%2,%3}, {%4,%5,%6,%7}, %8, 1, 1, 1, 0;\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
  }
};

template <>
struct Wgmma<2> {
  static __device__ __forceinline__ void run(float (&d)[8], const uint32_t (&a)[4], uint64_t b) {
    asm volatile(
        "wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 {%0,%1,%2,%3,%4,%5,%6,%7}, {%8,%9,%10,%11}, %12, "
        "1, 1, 1, 0;\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
  }
};

template <>
struct Wgmma<4> {
  static __device__ __forceinline__ void run(float (&d)[16], const uint32_t (&a)[4], uint64_t b) {
    asm volatile(
        "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,"
        "%15}, {%16,%17,%18,%19}, %20, 1, 1, 1, 0;\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
  }
};

template <int N>
__device__ __forceinline__ void keep(float (&d)[N]) {  // ties the accumulators to the wgmma wait
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

__device__ __forceinline__ void keep(uint32_t (&a)[4][4]) {  // the A registers live until the wait
#pragma unroll
  for (int s = 0; s < 4; ++s)
#pragma unroll
    for (int i = 0; i < 4; ++i) asm volatile("" : "+r"(a[s][i])::"memory");
}

__device__ __forceinline__ uint32_t mul_bf16x2(uint32_t a, uint32_t b) {
  __nv_bfloat162 x, y;
  memcpy(&x, &a, 4);
  memcpy(&y, &b, 4);
  const __nv_bfloat162 d = __hmul2(x, y);
  uint32_t r;
  memcpy(&r, &d, 4);
  return r;
}

template <int NT, int WG>
__global__ void __launch_bounds__(128 * WG)
    wg_gemm(const __nv_bfloat16* __restrict__ x, const uint4* __restrict__ qweight, const uint32_t* __restrict__ sz,
            __nv_bfloat16* __restrict__ y, int m, int n, int k, int ldx, int ldy) {
  constexpr int RT = WGX_RT;  // tiles per warp: a warpgroup covers 64 RT rows with one staged x chunk
  extern __shared__ __align__(128) unsigned char smem[];
  const int wg = threadIdx.x >> 7, wt = threadIdx.x & 127, warp = wt >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2;
  const int chunks = k >> 6, groups = k / kGroup, row_groups = n / (64 * RT);
  unsigned char* xbuf = smem + wg * 2 * NT * 1024;                      // [2][4 steps][NT][2 halves][128 B]
  float* partial = reinterpret_cast<float*>(smem + WG * 2 * NT * 1024);  // [WG][4 RT tiles][32 lanes][4 NT]
  constexpr uint32_t kLbo = WGX_SWAP ? 256 : 128, kSbo = WGX_SWAP ? 128 : 256;

  for (int rg = blockIdx.x; rg < row_groups; rg += gridDim.x) {
    const uint4* wtile[RT];
    const uint32_t* szt[RT];
#pragma unroll
    for (int i = 0; i < RT; ++i) {
      const int tile = rg * 4 * RT + 4 * i + warp;
      wtile[i] = qweight + (size_t)tile * chunks * 32 + lane;
      szt[i] = sz + (size_t)tile * groups * 16;
    }
    float d[RT][4 * NT];
#pragma unroll
    for (int i = 0; i < RT; ++i)
#pragma unroll
      for (int e = 0; e < 4 * NT; ++e) d[i][e] = 0.f;
    uint4 wn[RT];
    uint32_t s0n[RT], s1n[RT];
#pragma unroll
    for (int i = 0; i < RT; ++i) {
      wn[i] = load_streaming(wtile[i] + (size_t)wg * 32);
      s0n[i] = __ldg(szt[i] + (wg >> 1) * 16 + g);
      s1n[i] = __ldg(szt[i] + (wg >> 1) * 16 + g + 8);
    }
    int it = 0;
    for (int c = wg; c < chunks; c += WG, ++it) {
      uint4 w[RT];
      uint32_t sz0[RT], sz1[RT];
#pragma unroll
      for (int i = 0; i < RT; ++i) {
        w[i] = wn[i];
        sz0[i] = s0n[i];
        sz1[i] = s1n[i];
        if (c + WG < chunks) {  // next chunk's weights in flight while this one computes
          wn[i] = load_streaming(wtile[i] + (size_t)(c + WG) * 32);
          s0n[i] = __ldg(szt[i] + ((c + WG) >> 1) * 16 + g);
          s1n[i] = __ldg(szt[i] + ((c + WG) >> 1) * 16 + g + 8);
        }
      }
      unsigned char* xb = xbuf + (it & 1) * NT * 1024;
      const int xc = WGX_XFIXED ? 0 : c;  // probe: 1 always stages chunk 0 (wrong output; x always cached)
      for (int id = wt; id < 64 * NT; id += 128) {  // 8 NT tokens x 8 pieces of 8 k
        const int tok = id >> 3, q = id & 7;
        const uint4 v = tok < m ? __ldg(reinterpret_cast<const uint4*>(x + (size_t)tok * ldx + 64 * xc) + q)
                                : make_uint4(0, 0, 0, 0);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int s = 2 * (q & 1) + (i >> 1), h = i & 1;
          const int off = ((s * NT + (tok >> 3)) * 2 + h) * 128 + (tok & 7) * 16 + 4 * (q >> 1);
          *reinterpret_cast<uint32_t*>(xb + off) = word_of(v, i);
        }
      }
      asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
      asm volatile("bar.sync %0, 128;\n" ::"r"(1 + wg) : "memory");
      uint32_t a[RT][4][4];
#pragma unroll
      for (int i = 0; i < RT; ++i) {
        const uint32_t z0 = (sz0[i] & 0xFFFF0000u) | (sz0[i] >> 16), z1 = (sz1[i] & 0xFFFF0000u) | (sz1[i] >> 16);
        const uint32_t sc0 = (sz0[i] << 16) | (sz0[i] & 0xFFFFu), sc1 = (sz1[i] << 16) | (sz1[i] & 0xFFFFu);
#pragma unroll
        for (int s = 0; s < 4; ++s) {
          const uint32_t word = word_of(w[i], s);
          a[i][s][0] = mul_bf16x2(code_pair(word, 0, z0), sc0);
          a[i][s][1] = mul_bf16x2(code_pair(word, 1, z1), sc1);
          a[i][s][2] = mul_bf16x2(code_pair(word, 2, z0), sc0);
          a[i][s][3] = mul_bf16x2(code_pair(word, 3, z1), sc1);
        }
        keep(d[i]);
      }
      asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
      for (int s = 0; s < 4; ++s)
#pragma unroll
        for (int i = 0; i < RT; ++i) Wgmma<NT>::run(d[i], a[i][s], smem_desc(xb + s * NT * 256, kLbo, kSbo));
      asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
      asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
#pragma unroll
      for (int i = 0; i < RT; ++i) {
        keep(d[i]);
        keep(a[i]);
      }
    }
#pragma unroll
    for (int i = 0; i < RT; ++i) {
      float* mine = partial + ((size_t)(wg * 4 * RT + 4 * i + warp) * 32 + lane) * 4 * NT;
#pragma unroll
      for (int e = 0; e < 4 * NT; ++e) mine[e] = d[i][e];
    }
    __syncthreads();
    for (int id = threadIdx.x; id < 4 * RT * 128 * NT; id += 128 * WG) {  // the tiles, summed over warpgroups
      const int tp = id / (128 * NT), rest = id % (128 * NT), l = rest / (4 * NT), e = rest % (4 * NT);
      const int j = e >> 2, ee = e & 3;
      float v = 0.f;
#pragma unroll
      for (int q = 0; q < WG; ++q) v += partial[((size_t)(q * 4 * RT + tp) * 32 + l) * 4 * NT + e];
      const int row = (rg * 4 * RT + tp) * 16 + (l >> 2) + (ee >= 2 ? 8 : 0), token = 8 * j + 2 * (l & 3) + (ee & 1);
      if (token < m) y[(size_t)token * ldy + row] = __float2bfloat16(v);
    }
    __syncthreads();
  }
}

template <int NT, int WG>
cudaError_t launch_wg(const void* x, const void* qweight, const void* sz, void* y, int m, int n, int k, int ldx,
                      int ldy, int blocks, cudaStream_t stream) {
  auto kernel = wg_gemm<NT, WG>;
  const int smem = WG * 2 * NT * 1024 + WG * 4 * WGX_RT * 32 * 4 * NT * (int)sizeof(float);
  static int fit[kMaxDevices] = {};
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  if (device >= kMaxDevices) return cudaErrorInvalidDevice;
  if (fit[device] == 0) {
    int sms = 0, per_sm = 0;
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    if (err == cudaSuccess) err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, 128 * WG, smem);
    if (err != cudaSuccess) return err;
    if (per_sm == 0) return cudaErrorInvalidConfiguration;
    fit[device] = sms * per_sm;
  }
  if (blocks <= 0) blocks = fit[device];
  if (blocks > n / (64 * WGX_RT)) blocks = n / (64 * WGX_RT);
  kernel<<<blocks, 128 * WG, smem, stream>>>(static_cast<const __nv_bfloat16*>(x), static_cast<const uint4*>(qweight),
                                             static_cast<const uint32_t*>(sz), static_cast<__nv_bfloat16*>(y), m, n,
                                             k, ldx, ldy);
  return cudaGetLastError();
}

}  // namespace

extern "C" int er_w4a16_gemm(const void* x, const void* qweight, const void* sz, void* y, int m, int n, int k,
                             int ldx, int ldy, int blocks, void* stream) {
  if (m < 1 || m > 32 || n % (64 * WGX_RT) || k % kGroup || ldx % 8) return cudaErrorInvalidValue;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const bool few = n <= 6144;
#define ER_WG(NT)                                                                  \
  return few ? launch_wg<NT, WGX_FEW>(x, qweight, sz, y, m, n, k, ldx, ldy, blocks, s) \
             : launch_wg<NT, WGX_MANY>(x, qweight, sz, y, m, n, k, ldx, ldy, blocks, s)
  if (m <= 8) ER_WG(1);
  if (m <= 16) ER_WG(2);
  ER_WG(4);
#undef ER_WG
}
