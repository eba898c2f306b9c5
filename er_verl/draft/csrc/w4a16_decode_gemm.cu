// W4A16 GEMM for the drafter's decode steps: y[M, N] = x[M, K] · dequant(W)[N, K]^T, M = 1..32 tokens,
// and the in-place RTN requant that writes its layout from the target's bf16 weight.
//
// Why not Marlin: at M <= 8 SGLang's AWQ-Marlin GEMM moves ~1.7 TB/s on an H200 for Qwen3-8B's layer
// shapes (57 us per decoder layer for 97 MB of int4 weights), so a draft step costs 0.68x of a bf16 target
// step. Here the weights are packed in the order of the tensor cores' A fragment: one 16-byte load per
// lane is the A operand of four m16n8k16 MMAs (16 rows x 64 k per warp), unpacked with one shift and one
// mask-and-or per bf16 pair. The M tokens are the MMA's columns, 8 per MMA (NT = ceil(M / 8) MMAs share
// each unpacked A fragment; unused columns read zeros), and the kernel streams the weights once.
//
// Layout (gemv.py packs it), group G = 128, codes q in [0, 15], w[n, k] = (q - z) * s:
//   qweight  int32 [N/16][K/64][32 lanes][4 words]: lane l = 4g + t, word s (k16 step) holds for rows
//            r0 = g and r1 = g + 8 of the 16-row tile, k0 = 16t + 4s: nibble pairs (p, 4 + p) with
//            p = 0: (r0, k0), p = 1: (r1, k0), p = 2: (r0, k0 + 2), p = 3: (r1, k0 + 2), the low nibble
//            of a pair at k, the high one at k + 1. Or-ing a pair under 0x4300 (the bf16 exponent of 128)
//            gives the bf16 pair 128 + q; subtracting 128 + z gives q - z exactly.
//            (An MMA sums over its 16 k in any order, so the chunk's k are assigned to fragment slots
//            such that lane t's B operand for all four steps is x[64c + 16t .. 64c + 16t + 15]: two
//            16-byte loads straight from x, no staging.)
//   sz       int32 [N/16][K/G][16 rows]: low 16 bits bf16 scale s, high 16 bits bf16 (128 + z).
// Each 64-k chunk is four MMAs into fresh fp32 registers, scaled per row, then added to the row's sum.
// A block takes TILES adjacent tiles at a time (x is read once per chunk for all of them); its WARPS warps
// split K (warp w takes chunks w, w + WARPS, ...), and shared memory sums them, in two alternating buffers so
// one barrier per tile suffices. WARPS, UNROLL (chunks whose loads a warp issues before using the first) and
// TILES are picked per launch (er_w4a16_gemm) from sweeps on an H200, 8B shapes: at M <= 8 one chunk in
// flight per warp and more resident blocks beat deeper unrolling; above, fewer x reads pay.

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

namespace {

constexpr int kGroup = 128;
constexpr int kMaxDevices = 64;

__device__ __forceinline__ uint4 load_streaming(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

__device__ __forceinline__ uint32_t and_or(uint32_t a, uint32_t mask, uint32_t bits) {
  uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, 0xea;" : "=r"(d) : "r"(a), "r"(mask), "r"(bits));  // (a & mask) | bits
  return d;
}

__device__ __forceinline__ uint32_t sub_bf16x2(uint32_t a, uint32_t b) {
  __nv_bfloat162 x, y;
  memcpy(&x, &a, 4);
  memcpy(&y, &b, 4);
  const __nv_bfloat162 d = __hsub2(x, y);
  uint32_t r;
  memcpy(&r, &d, 4);
  return r;
}

__device__ __forceinline__ uint32_t code_pair(uint32_t word, int p, uint32_t zero) {
  return sub_bf16x2(and_or(word >> (4 * p), 0x000F000Fu, 0x43004300u), zero);
}

__device__ __forceinline__ void mma_bf16(float* c, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint32_t b0, uint32_t b1) {
  asm(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t word_of(const uint4& v, int j) {
  return j == 0 ? v.x : j == 1 ? v.y : j == 2 ? v.z : v.w;
}

// One 64-k chunk of one 16-row tile against NT x fragments: four MMAs per 8 tokens into fresh fp32
// registers, scaled by the rows' group scales, added to acc. w: the lane's packed word quad; sz0 / sz1: the
// (scale, 128 + zero) pairs of rows g and g + 8; b[j]: x[token g + 8j][16t .. 16t + 15] of the chunk.
template <int NT>
__device__ __forceinline__ void tile_chunk(float (&acc)[NT][4], const uint4& w, uint32_t sz0, uint32_t sz1,
                                           const uint4 (&b)[NT][2]) {
  const uint32_t z0 = (sz0 & 0xFFFF0000u) | (sz0 >> 16), z1 = (sz1 & 0xFFFF0000u) | (sz1 >> 16);
  float d[NT][4] = {};
#pragma unroll
  for (int s = 0; s < 4; ++s) {
    const uint32_t word = word_of(w, s);
    const uint32_t a0 = code_pair(word, 0, z0), a1 = code_pair(word, 1, z1);
    const uint32_t a2 = code_pair(word, 2, z0), a3 = code_pair(word, 3, z1);
#pragma unroll
    for (int j = 0; j < NT; ++j)
      mma_bf16(d[j], a0, a1, a2, a3, word_of(b[j][s >> 1], (2 * s) & 3), word_of(b[j][s >> 1], (2 * s + 1) & 3));
  }
  const float s0 = __uint_as_float(sz0 << 16), s1 = __uint_as_float(sz1 << 16);
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    acc[j][0] += d[j][0] * s0;
    acc[j][1] += d[j][1] * s0;
    acc[j][2] += d[j][2] * s1;
    acc[j][3] += d[j][3] * s1;
  }
}

template <int NT, int WARPS, int UNROLL, int TILES>
__global__ void __launch_bounds__(32 * WARPS)
    w4a16_gemm(const __nv_bfloat16* __restrict__ x, const uint4* __restrict__ qweight,
               const uint32_t* __restrict__ sz, __nv_bfloat16* __restrict__ y, int m, int n, int k, int ldx,
               int ldy) {
  extern __shared__ float partial[];  // [2 rounds][WARPS][32 lanes][4 NT]
  const int chunks = k >> 6, groups = k / kGroup, tile_groups = (n >> 4) / TILES;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const uint4* xg[NT];
#pragma unroll
  for (int j = 0; j < NT; ++j) xg[j] = reinterpret_cast<const uint4*>(x + (size_t)min(g + 8 * j, m - 1) * ldx) + 2 * t;

  int round = 0;
  for (int tg = blockIdx.x; tg < tile_groups; tg += gridDim.x) {
    const uint4* wt = qweight + (size_t)tg * TILES * chunks * 32 + lane;  // tile i of the group at + i chunks 32
    const uint32_t* szt = sz + (size_t)tg * TILES * groups * 16;          // and + i groups 16
    float acc[TILES][NT][4] = {};
    for (int c0 = warp; c0 < chunks; c0 += WARPS * UNROLL) {
      uint4 w[UNROLL][TILES];
      uint32_t sz0[UNROLL][TILES], sz1[UNROLL][TILES];
#pragma unroll
      for (int u = 0; u < UNROLL; ++u) {
        const int c = c0 + u * WARPS;
        if (c < chunks) {
#pragma unroll
          for (int i = 0; i < TILES; ++i) {
            w[u][i] = load_streaming(wt + ((size_t)i * chunks + c) * 32);
            sz0[u][i] = __ldg(szt + (i * groups + (c >> 1)) * 16 + g);
            sz1[u][i] = __ldg(szt + (i * groups + (c >> 1)) * 16 + g + 8);
          }
        }
      }
#pragma unroll
      for (int u = 0; u < UNROLL; ++u) {
        const int c = c0 + u * WARPS;
        if (c >= chunks) break;
        uint4 b[NT][2];  // x is read once per chunk for all TILES tiles
#pragma unroll
        for (int j = 0; j < NT; ++j) {
          const bool live = g + 8 * j < m;
          b[j][0] = live ? __ldg(xg[j] + 8 * c) : make_uint4(0, 0, 0, 0);
          b[j][1] = live ? __ldg(xg[j] + 8 * c + 1) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int i = 0; i < TILES; ++i) tile_chunk<NT>(acc[i], w[u][i], sz0[u][i], sz1[u][i], b);
      }
    }
#pragma unroll
    for (int i = 0; i < TILES; ++i, round ^= 1) {  // one barrier per tile: the two buffers alternate
      const int tile = tg * TILES + i;
      float* mine = partial + ((size_t)(round * WARPS + warp) * 32 + lane) * 4 * NT;
#pragma unroll
      for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) mine[4 * j + e] = acc[i][j][e];
      __syncthreads();
      // one thread per (lane, accumulator): rows g / g + 8, tokens 8j + 2t (+1); 128 NT of them, more than a
      // block of 8 warps has at NT > 2
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

template <int NT, int WARPS, int UNROLL = 1, int TILES = 1>
cudaError_t launch(const void* x, const void* qweight, const void* sz, void* y, int m, int n, int k, int ldx,
                   int ldy, int blocks, cudaStream_t stream) {
  if ((n / 16) % TILES) return launch<NT, WARPS, UNROLL, 1>(x, qweight, sz, y, m, n, k, ldx, ldy, blocks, stream);
  auto kernel = w4a16_gemm<NT, WARPS, UNROLL, TILES>;
  constexpr int kThreads = 32 * WARPS;
  const int smem = 2 * WARPS * 32 * 4 * NT * (int)sizeof(float);
  static int fit[kMaxDevices] = {};  // per device, once: blocks resident at once (SMs x blocks per SM)
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
    fit[device] = sms * (per_sm > 0 ? per_sm : 1);
  }
  if (blocks <= 0) blocks = fit[device];
  if (blocks > n / 16 / TILES) blocks = n / 16 / TILES;
  kernel<<<blocks, kThreads, smem, stream>>>(static_cast<const __nv_bfloat16*>(x),
                                             static_cast<const uint4*>(qweight),
                                             static_cast<const uint32_t*>(sz),
                                             static_cast<__nv_bfloat16*>(y), m, n, k, ldx, ldy);
  return cudaGetLastError();
}

// RTN of one group of 128 weights (quantize.rtn_int4 on CUDA, bit for bit): lo = min(w, 0), hi = max(w, 0),
// s = bf16 rounded up from max(hi - lo, 1e-5) * fl32(1/15) (torch on CUDA divides by a Python scalar as a
// multiplication by its fp32 reciprocal), z = rint(-lo / s) in [0, 15], q = rint(w / s) + z in [0, 15].
__device__ void rtn_group(const __nv_bfloat16* w, float* out_w, float& s32, uint32_t& s_bits, float& zero) {
  float lo = 0.f, hi = 0.f;
  for (int i = 0; i < kGroup; ++i) {
    out_w[i] = __bfloat162float(w[i]);
    lo = fminf(lo, out_w[i]);
    hi = fmaxf(hi, out_w[i]);
  }
  const float exact = fmaxf(hi - lo, 1e-5f) * (1.f / 15.f);
  __nv_bfloat16 sb = __float2bfloat16_rn(exact);
  uint16_t bits;
  memcpy(&bits, &sb, 2);
  if (__bfloat162float(sb) < exact) ++bits;  // next representable value up (positive)
  s_bits = bits;
  s32 = __uint_as_float((uint32_t)bits << 16);
  zero = fminf(fmaxf(rintf(-lo / s32), 0.f), 15.f);
}

// One thread per (16-row tile, g, group): rows g and g + 8, 128 k each; writes the group's 32 words of
// lanes 4g..4g+3 and its two sz entries.
__global__ void w4a16_requant(const __nv_bfloat16* __restrict__ w, int ldw, uint32_t* __restrict__ qweight,
                              uint32_t* __restrict__ sz, int n, int k) {
  const int groups = k / kGroup, chunks = k >> 6;
  const int id = blockIdx.x * blockDim.x + threadIdx.x;
  if (id >= (n >> 4) * 8 * groups) return;
  const int grp = id % groups, g = (id / groups) & 7, tile = id / (groups * 8);
  float vals[2][kGroup];
  float scale[2], zero[2];
  for (int r = 0; r < 2; ++r) {
    const int row = tile * 16 + 8 * r + g;
    uint32_t bits;
    rtn_group(w + (size_t)row * ldw + grp * kGroup, vals[r], scale[r], bits, zero[r]);
    const uint32_t zbits = __float_as_uint(128.f + zero[r]) >> 16;  // exact in bf16
    sz[((size_t)tile * groups + grp) * 16 + 8 * r + g] = bits | (zbits << 16);
  }
  for (int half = 0; half < 2; ++half) {  // the group's two 64-k chunks
    const int c = 2 * grp + half;
    for (int t = 0; t < 4; ++t)
      for (int s = 0; s < 4; ++s) {
        uint32_t word = 0;
        for (int p = 0; p < 4; ++p)
          for (int e = 0; e < 2; ++e) {
            const int r = p & 1, kk = 64 * half + 16 * t + 4 * s + 2 * (p >> 1) + e;
            const float q = fminf(fmaxf(rintf(vals[r][kk] / scale[r]) + zero[r], 0.f), 15.f);
            word |= (uint32_t)q << (4 * p + 16 * e);
          }
        qweight[(((size_t)tile * chunks + c) * 32 + 4 * g + t) * 4 + s] = word;
      }
  }
}

}  // namespace

// y[m, n] (row stride ldy) = x[m, k] (row stride ldx, rows 16-byte aligned) times the packed weight.
// Needs 1 <= m <= 32, n % 16 == 0, k % 128 == 0. blocks <= 0: as many as fit on the GPU at once.
// Returns a cudaError_t (0 = launched).
extern "C" int er_w4a16_gemm(const void* x, const void* qweight, const void* sz, void* y, int m, int n, int k,
                             int ldx, int ldy, int blocks, void* stream) {
  if (m < 1 || m > 32 || n % 16 || k % kGroup || ldx % 8) return cudaErrorInvalidValue;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  // H200, Qwen3-8B layers, L2-cold (results/issue3_decode_gemm_v4_h200.json, results/issue3_decode_gemm_tiles_h200.json):
  // M <= 8: 16 warps per tile where there are few tiles (N <= 4096: o_proj, down_proj), 8 where there are many
  // (qkv_proj, gate_up_proj), one chunk in flight per warp: 43 us per decoder layer (53 with 16 warps x 4 chunks
  // everywhere). M > 8: every tile re-reads all of x from L2, so the few-tile shapes and the widest (N >= 16384:
  // gate_up_proj) give each block 2 or 4 adjacent tiles per x read; qkv_proj was fastest with one.
  const bool few_tiles = n <= 4096, widest = n >= 16384;
  switch ((m + 7) / 8) {
    case 1: return few_tiles ? launch<1, 16>(x, qweight, sz, y, m, n, k, ldx, ldy, blocks, s)
                             : launch<1, 8>(x, qweight, sz, y, m, n, k, ldx, ldy, blocks, s);
    case 2: return few_tiles ? launch<2, 16, 4, 2>(x, qweight, sz, y, m, n, k, ldx, ldy, blocks, s)
                   : widest  ? launch<2, 4, 1, 4>(x, qweight, sz, y, m, n, k, ldx, ldy, blocks, s)
                             : launch<2, 8>(x, qweight, sz, y, m, n, k, ldx, ldy, blocks, s);
    case 3: return few_tiles || widest ? launch<3, 16, 1, 2>(x, qweight, sz, y, m, n, k, ldx, ldy, blocks, s)
                                       : launch<3, 8>(x, qweight, sz, y, m, n, k, ldx, ldy, blocks, s);
    default: return few_tiles || widest ? launch<4, 16, 1, 2>(x, qweight, sz, y, m, n, k, ldx, ldy, blocks, s)
                                        : launch<4, 8>(x, qweight, sz, y, m, n, k, ldx, ldy, blocks, s);
  }
}

// RTN int4 of w[n, k] (bf16, row stride ldw) written into qweight / sz in the GEMM's layout, in place.
extern "C" int er_w4a16_requant(const void* w, const void* qweight, const void* sz, int n, int k, int ldw,
                                void* stream) {
  if (n % 16 || k % kGroup) return cudaErrorInvalidValue;
  const int threads = (n >> 4) * 8 * (k / kGroup), block = 128;
  w4a16_requant<<<(threads + block - 1) / block, block, 0, static_cast<cudaStream_t>(stream)>>>(
      static_cast<const __nv_bfloat16*>(w), ldw, static_cast<uint32_t*>(const_cast<void*>(qweight)),
      static_cast<uint32_t*>(const_cast<void*>(sz)), n, k);
  return cudaGetLastError();
}
