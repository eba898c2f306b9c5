// Read-bandwidth probe (experiment, not product code): the same bytes read in three patterns.
//   chunks<WARPS, UNROLL>: the decode GEMM's pattern: a block per 32 KB tile (grid-stride), warp w reads 512-byte
//                          chunks w, w + WARPS, ... with UNROLL chunks' loads in flight;
//   contig<UNROLL>:        each block streams one contiguous span, 16 bytes per thread per load, UNROLL in flight;
//   bulk<CONS, STAGE, STAGES>: one producer thread per block issues cp.async.bulk copies of STAGE bytes into a
//                          ring of STAGES shared-memory buffers (mbarrier complete_tx); CONS consumer warps read them.
// Each thread XORs what it reads and stores one word, so no load is dead.
#include <cuda_runtime.h>
#include <stdint.h>

namespace {

__device__ __forceinline__ uint4 ldg_stream(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
  return v;
}

template <int WARPS, int UNROLL>
__global__ void __launch_bounds__(32 * WARPS) chunks(const uint4* src, int tiles, int chunks_per_tile, uint32_t* out) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  uint32_t acc = 0;
  for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const uint4* t = src + (size_t)tile * chunks_per_tile * 32 + lane;
    for (int c0 = warp; c0 < chunks_per_tile; c0 += WARPS * UNROLL) {
      uint4 v[UNROLL];
#pragma unroll
      for (int u = 0; u < UNROLL; ++u) {
        const int c = c0 + u * WARPS;
        v[u] = c < chunks_per_tile ? ldg_stream(t + (size_t)c * 32) : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
      for (int u = 0; u < UNROLL; ++u) acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
    }
    __syncthreads();  // the GEMM's per-tile barrier
  }
  out[blockIdx.x * blockDim.x + threadIdx.x] = acc;
}

template <int UNROLL>
__global__ void __launch_bounds__(256) contig(const uint4* src, size_t per_block, uint32_t* out) {
  const uint4* b = src + (size_t)blockIdx.x * per_block;
  uint32_t acc = 0;
  for (size_t i = threadIdx.x; i < per_block; i += 256 * UNROLL) {
    uint4 v[UNROLL];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const size_t j = i + (size_t)u * 256;
      v[u] = j < per_block ? ldg_stream(b + j) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
  }
  out[blockIdx.x * blockDim.x + threadIdx.x] = acc;
}

__device__ __forceinline__ uint32_t smem_addr(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
  uint32_t done;
  do {
    asm volatile("{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
                 : "=r"(done) : "r"(smem_addr(bar)), "r"(parity) : "memory");
  } while (!done);
}

template <int CONS, int STAGE, int STAGES>
__global__ void __launch_bounds__(32 * (CONS + 1)) bulk(const uint8_t* src, int stages_per_block, uint32_t* out) {
  extern __shared__ __align__(128) uint8_t ring[];
  __shared__ __align__(8) uint64_t full[STAGES], empty[STAGES];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (threadIdx.x == 0) {
    for (int s = 0; s < STAGES; ++s) {
      asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" :: "r"(smem_addr(&full[s])));
      asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" :: "r"(smem_addr(&empty[s])), "r"(CONS));
    }
    asm volatile("fence.mbarrier_init.release.cluster;");
  }
  __syncthreads();
  const uint8_t* base = src + (size_t)blockIdx.x * stages_per_block * STAGE;
  uint32_t acc = 0;
  if (warp == CONS) {
    if (lane == 0) {
      for (int i = 0; i < stages_per_block; ++i) {
        const int s = i % STAGES;
        if (i >= STAGES) mbar_wait(&empty[s], ((i / STAGES) - 1) & 1);
        asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" :: "r"(smem_addr(&full[s])), "r"(STAGE) : "memory");
        asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                     :: "r"(smem_addr(ring + s * STAGE)), "l"(base + (size_t)i * STAGE), "r"(STAGE), "r"(smem_addr(&full[s]))
                     : "memory");
      }
    }
  } else {
    for (int i = 0; i < stages_per_block; ++i) {
      const int s = i % STAGES;
      mbar_wait(&full[s], (i / STAGES) & 1);
      const uint4* p = reinterpret_cast<const uint4*>(ring + s * STAGE);
#pragma unroll 4
      for (int j = warp * 32 + lane; j < STAGE / 16; j += CONS * 32) {
        const uint4 v = p[j];
        acc ^= v.x ^ v.y ^ v.z ^ v.w;
      }
      __syncwarp();
      if (lane == 0) asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" :: "r"(smem_addr(&empty[s])) : "memory");
    }
  }
  out[blockIdx.x * blockDim.x + threadIdx.x] = acc;
}

template <typename K>
int fit_blocks(K kernel, int threads, int smem) {
  int dev = 0, sms = 0, per = 0;
  cudaGetDevice(&dev);
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per, kernel, threads, smem);
  return sms * (per > 0 ? per : 1);
}

template <int WARPS, int UNROLL>
int run_chunks(const void* src, size_t bytes, void* out, int blocks, cudaStream_t s, size_t* read) {
  auto k = chunks<WARPS, UNROLL>;
  const int cpt = 64, tiles = (int)(bytes / (cpt * 512));  // 32 KB tiles (K = 4096)
  if (blocks <= 0) blocks = fit_blocks(k, 32 * WARPS, 0);
  if (blocks > tiles) blocks = tiles;
  *read = (size_t)tiles * cpt * 512;
  k<<<blocks, 32 * WARPS, 0, s>>>((const uint4*)src, tiles, cpt, (uint32_t*)out);
  return cudaGetLastError();
}

template <int UNROLL>
int run_contig(const void* src, size_t bytes, void* out, int blocks, cudaStream_t s, size_t* read) {
  if (blocks <= 0) blocks = fit_blocks(contig<UNROLL>, 256, 0);
  const size_t per = bytes / 16 / blocks;  // the remainder is not read (< blocks x 16 bytes)
  *read = per * blocks * 16;
  contig<UNROLL><<<blocks, 256, 0, s>>>((const uint4*)src, per, (uint32_t*)out);
  return cudaGetLastError();
}

template <int CONS, int STAGE, int STAGES>
int run_bulk(const void* src, size_t bytes, void* out, int blocks, cudaStream_t s, size_t* read) {
  auto k = bulk<CONS, STAGE, STAGES>;
  const int smem = STAGE * STAGES;
  const int fit = fit_blocks(k, 32 * (CONS + 1), smem);
  if (blocks <= 0) blocks = fit;
  const int per = (int)(bytes / STAGE / blocks);  // the remainder is not read
  *read = (size_t)per * blocks * STAGE;
  k<<<blocks, 32 * (CONS + 1), smem, s>>>((const uint8_t*)src, per, (uint32_t*)out);
  return cudaGetLastError();
}

}  // namespace

// variant ids: see NAMES in bw_probe.py (same order)
extern "C" int bw_read(int variant, const void* src, size_t bytes, void* out, int blocks, void* stream, size_t* read) {
  cudaStream_t s = (cudaStream_t)stream;
  switch (variant) {
    case 0: return run_chunks<8, 1>(src, bytes, out, blocks, s, read);
    case 1: return run_chunks<16, 1>(src, bytes, out, blocks, s, read);
    case 2: return run_chunks<8, 4>(src, bytes, out, blocks, s, read);
    case 3: return run_chunks<16, 4>(src, bytes, out, blocks, s, read);
    case 4: return run_chunks<4, 8>(src, bytes, out, blocks, s, read);
    case 5: return run_contig<1>(src, bytes, out, blocks, s, read);
    case 6: return run_contig<4>(src, bytes, out, blocks, s, read);
    case 7: return run_contig<8>(src, bytes, out, blocks, s, read);
    case 8: return run_bulk<4, 8192, 4>(src, bytes, out, blocks, s, read);
    case 9: return run_bulk<4, 16384, 4>(src, bytes, out, blocks, s, read);
    case 10: return run_bulk<8, 16384, 6>(src, bytes, out, blocks, s, read);
    case 11: return run_bulk<4, 32768, 3>(src, bytes, out, blocks, s, read);
    case 12: return run_bulk<2, 8192, 8>(src, bytes, out, blocks, s, read);
    case 13: return run_bulk<4, 4096, 8>(src, bytes, out, blocks, s, read);
  }
  return cudaErrorInvalidValue;
}
