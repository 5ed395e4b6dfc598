// Kernel bodies of the fused multi-mode product Y = X x_1 M_1 ... x_N M_N that
// Tucker reconstruction (M_n = A_n diag(l_n)) and the core-space projection of
// the gradient (M_n = A_n^T) share, and of the scaling-vector gradient.
//
// Two passes, each reading and writing device memory once:
//  A. trailing modes [s, N): one block per slab X[a, :] (a = leading index),
//     the slab in shared memory, modes applied last first; the result goes to a
//     staging tensor T laid out in column groups of w ([cols/w][rows][w]) so
//     that pass B reads contiguous tiles.
//  B. leading modes [0, s): one block per group of w columns. For each r0 (the
//     index of mode 0) the tile T[r0, :, cols] is brought into shared memory by
//     asynchronous copies several tiles ahead, modes s-1..1 are applied there,
//     and the result is accumulated into registers with column r0 of M_0; at
//     the end the registers hold Y[:, cols], written once.
// Inside a block a mode product is a set of fibers: a thread loads one fiber
// (K values along the mode, stride inStrideK) into registers and writes J
// outputs, the matrix rows coming from shared memory as 16-byte broadcasts.
// Buffer rows are padded (see the planner in cuda_tucker.cu) so that a warp's
// fibers fall in distinct banks.
#pragma once

#include "core/shape.h"
#include "cuda/kernel_common.cuh"

namespace tera {
namespace cuda {

constexpr int kPhaseAThreads = 256;
constexpr int kPhaseBThreads = 512;
constexpr int kPhaseAStages = 2;  // slabs in flight per block
constexpr int kPhaseBStages = 4;  // tiles in flight per block
constexpr int kPhaseAFiberCap = 32;
constexpr int kPhaseBFiberCap = 16;
constexpr int kPhaseBAccumulators = 64;  // registers per thread for the output columns

// One mode applied inside a block: in [P, K, Q] -> out [P, J, Q], q contiguous.
struct ModeStep {
  int K = 0, J = 0;
  int kTier = 4;  // fiber registers: 4, 8, 16 or 32 >= K
  int Q = 1;
  int fibers = 0;  // P * Q
  FastDiv byQ;
  int inStrideP = 0, inStrideK = 0;
  int outStrideP = 0, outStrideJ = 0;
  int mat = 0;  // float offset of this mode's zero-padded [J][kTier] matrix in shared memory
};

// A group of consecutive modes applied by one block, last mode first.
struct GroupPlan {
  int steps = 0;
  ModeStep step[kMaxOrder];
  const float* mats[kMaxOrder] = {};  // global [J][K] row-major, per step
  int matFloats = 0;                  // shared matrix area (phase B adds M_0^T)
  int stageFloats = 0;                // one input stage, in the first step's layout
  int bufFloats = 0;                  // each of the two ping-pong buffers
  FastDiv loadDiv;                    // input row -> (p, k) of the first step
  int loadK = 1, loadStrideP = 0, loadStrideK = 0;
};

struct PhaseAParams {
  GroupPlan g;
  int64_t slabs = 0;  // rows of the input (leading index a)
  int slabIn = 0, slabOut = 0;
  int widthLog2 = 0;  // T's column group is 2^widthLog2
};

struct PhaseBParams {
  GroupPlan g;
  const float* u0 = nullptr;  // M_0, [j0][k0]
  int k0 = 0, j0 = 0;
  int u0Offset = 0;  // M_0^T, zero-padded [k0][J0MAX], in shared memory
  int widthLog2 = 0;
  int sliceIn = 0;        // rows of one tile: prod in-dims [1, s)
  int positions = 0;      // outputs per r0 and block: prod out-dims [1, s) * w
  int64_t rowsOut = 0;    // prod out-dims [1, s)
  int64_t rowsIn = 0;     // prod in-dims [0, s): rows of T
  int64_t rowLength = 0;  // columns of T and Y
  int64_t colBlocks = 0;
};

template <class Ctx>
TERA_DEV void loadGroupMats(const Ctx& c, const GroupPlan& g, float* mats) {
  for (int s = 0; s < g.steps; ++s) {
    const ModeStep& st = g.step[s];
    const int count = st.J * st.kTier;
    for (int idx = c.tid(); idx < count; idx += c.threads()) {
      const int j = idx / st.kTier, k = idx - j * st.kTier;
      mats[st.mat + idx] = k < st.K ? g.mats[s][int64_t(j) * st.K + k] : 0.0f;
    }
  }
}

// Issues asynchronous copies of `count` contiguous floats (rows of 2^widthLog2)
// into the first step's input layout.
template <class Ctx>
TERA_DEV void issueTileLoad(const Ctx& c, const GroupPlan& g, const float* src, int count,
                            int widthLog2, float* stage) {
  const int mask = (1 << widthLog2) - 1;
  for (int e = c.tid(); e < count; e += c.threads()) {
    const int row = e >> widthLog2, col = e & mask;
    const int p = int(fastDiv(g.loadDiv, uint32_t(row)));
    const int k = row - p * g.loadK;
    asyncCopy4(stage + p * g.loadStrideP + k * g.loadStrideK + col, src + e);
  }
}

template <int KT, int FPT, class Ctx>
TERA_DEV void fiberStep(const Ctx& c, const ModeStep& st, const float* in, float* out,
                        const float* mat) {
  const int stride = FPT * c.threads();
  for (int base = c.tid(); base < st.fibers; base += stride) {
    float x[FPT][KT];
    int outOffset[FPT];
    bool valid[FPT];
#pragma unroll
    for (int f = 0; f < FPT; ++f) {
      const int fiber = base + f * c.threads();
      valid[f] = fiber < st.fibers;
      const int safe = valid[f] ? fiber : base;
      const int p = int(fastDiv(st.byQ, uint32_t(safe)));
      const int q = safe - p * st.Q;
      const float* src = in + p * st.inStrideP + q;
      outOffset[f] = p * st.outStrideP + q;
#pragma unroll
      for (int k = 0; k < KT; ++k) x[f][k] = k < st.K ? src[k * st.inStrideK] : 0.0f;
    }
#pragma unroll 1
    for (int j = 0; j < st.J; ++j) {
      const float* u = mat + j * KT;
      float acc[FPT];
#pragma unroll
      for (int f = 0; f < FPT; ++f) acc[f] = 0.0f;
#pragma unroll
      for (int k = 0; k < KT; k += 4) {
        const Float4 w = load4(u + k);
#pragma unroll
        for (int f = 0; f < FPT; ++f) {
          acc[f] = fma32(w.x, x[f][k], acc[f]);
          acc[f] = fma32(w.y, x[f][k + 1], acc[f]);
          acc[f] = fma32(w.z, x[f][k + 2], acc[f]);
          acc[f] = fma32(w.w, x[f][k + 3], acc[f]);
        }
      }
#pragma unroll
      for (int f = 0; f < FPT; ++f) {
        if (valid[f]) out[outOffset[f] + j * st.outStrideJ] = acc[f];
      }
    }
  }
}

// Applies every step of the group (the first reads `stage`), ping-ponging
// between buf and buf + bufFloats, with a barrier after each; returns the
// buffer holding the result. Fibers of up to 16 use FPT fibers per thread,
// wider ones one (to bound registers).
template <int FPT, int KCAP, class Ctx>
TERA_DEV const float* runGroupSteps(const Ctx& c, const GroupPlan& g, const float* stage,
                                    float* buf, const float* mats) {
  const float* src = stage;
  for (int s = 0; s < g.steps; ++s) {
    const ModeStep& st = g.step[s];
    float* dst = buf + (s & 1) * g.bufFloats;
    const float* mat = mats + st.mat;
    switch (st.kTier) {
      case 4:
        fiberStep<4, FPT>(c, st, src, dst, mat);
        break;
      case 8:
        fiberStep<8, FPT>(c, st, src, dst, mat);
        break;
      case 16:
        fiberStep<16, FPT>(c, st, src, dst, mat);
        break;
      default:
        if (KCAP >= 32) fiberStep<(KCAP >= 32 ? 32 : 16), 1>(c, st, src, dst, mat);
        break;
    }
    c.sync();
    src = dst;
  }
  return src;
}

// Pass A. Shared memory: matrices, kPhaseAStages input stages, two buffers.
template <int FPT, class Ctx>
TERA_DEV void phaseABody(const Ctx& c, const PhaseAParams& P, const float* in, float* staged,
                         float* smem) {
  const GroupPlan& g = P.g;
  float* mats = smem;
  float* stages = smem + g.matFloats;  // stage i at stages + i * g.stageFloats
  float* buf = stages + kPhaseAStages * g.stageFloats;
  loadGroupMats(c, g, mats);

  const int64_t first = c.block(), stride = c.blocks();
  for (int s = 0; s < kPhaseAStages - 1; ++s) {
    const int64_t slab = first + s * stride;
    if (slab < P.slabs) {
      issueTileLoad(c, g, in + slab * P.slabIn, P.slabIn, 0, stages + s * g.stageFloats);
    }
    asyncCommit();
  }
  const int64_t w = int64_t(1) << P.widthLog2;
  const int mask = int(w) - 1;
  int iteration = 0;
  for (int64_t slab = first; slab < P.slabs; slab += stride, ++iteration) {
    const int64_t ahead = slab + (kPhaseAStages - 1) * stride;
    if (ahead < P.slabs) {
      issueTileLoad(c, g, in + ahead * P.slabIn, P.slabIn, 0,
                    stages + (iteration + kPhaseAStages - 1) % kPhaseAStages * g.stageFloats);
    }
    asyncCommit();
    asyncWait<kPhaseAStages - 1>();
    c.sync();
    const float* result = runGroupSteps<FPT, kPhaseAFiberCap>(
        c, g, stages + iteration % kPhaseAStages * g.stageFloats, buf, mats);
    // T[a, col] lives at ((col / w) * slabs + a) * w + col % w.
    for (int e = c.tid(); e < P.slabOut; e += c.threads()) {
      const int64_t group = e >> P.widthLog2;
      staged[(group * P.slabs + slab) * w + (e & mask)] = result[e];
    }
    c.sync();
  }
}

// Pass B. Shared memory: matrices (and M_0^T), kPhaseBStages tiles, two buffers.
template <int J0MAX, int PMAX, class Ctx>
TERA_DEV void phaseBBody(const Ctx& c, const PhaseBParams& P, const float* staged, float* out,
                         float* smem) {
  const GroupPlan& g = P.g;
  float* mats = smem;
  float* stages = smem + g.matFloats;  // stage i at stages + i * g.stageFloats
  float* buf = stages + kPhaseBStages * g.stageFloats;
  loadGroupMats(c, g, mats);
  for (int idx = c.tid(); idx < P.k0 * J0MAX; idx += c.threads()) {
    const int r = idx / J0MAX, j = idx - r * J0MAX;
    mats[P.u0Offset + idx] = j < P.j0 ? P.u0[int64_t(j) * P.k0 + r] : 0.0f;
  }

  const int w = 1 << P.widthLog2, mask = w - 1;
  const int tileFloats = P.sliceIn << P.widthLog2;
  const int first = c.tid() * PMAX;
  for (int64_t cb = c.block(); cb < P.colBlocks; cb += c.blocks()) {
    const float* base = staged + cb * P.rowsIn * w;
    float acc[J0MAX][PMAX];
#pragma unroll
    for (int j = 0; j < J0MAX; ++j) {
#pragma unroll
      for (int i = 0; i < PMAX; ++i) acc[j][i] = 0.0f;
    }
    for (int s = 0; s < kPhaseBStages - 1; ++s) {
      if (s < P.k0) {
        issueTileLoad(c, g, base + int64_t(s) * tileFloats, tileFloats, P.widthLog2,
                      stages + s * g.stageFloats);
      }
      asyncCommit();
    }
    for (int r0 = 0; r0 < P.k0; ++r0) {
      const int ahead = r0 + kPhaseBStages - 1;
      if (ahead < P.k0) {
        issueTileLoad(c, g, base + int64_t(ahead) * tileFloats, tileFloats, P.widthLog2,
                      stages + ahead % kPhaseBStages * g.stageFloats);
      }
      asyncCommit();
      asyncWait<kPhaseBStages - 1>();
      c.sync();
      const float* v = runGroupSteps<1, kPhaseBFiberCap>(
          c, g, stages + r0 % kPhaseBStages * g.stageFloats, buf, mats);
      float u[J0MAX];
#pragma unroll
      for (int j = 0; j < J0MAX; j += 4) {
        const Float4 q = load4(mats + P.u0Offset + r0 * J0MAX + j);
        u[j] = q.x;
        u[j + 1] = q.y;
        u[j + 2] = q.z;
        u[j + 3] = q.w;
      }
      // This thread's outputs are positions [first, first + PMAX) of the tile.
      float value[PMAX];
      if (first < P.positions) {  // buffers are padded to a multiple of 8 floats
        if constexpr (PMAX % 4 == 0) {
#pragma unroll
          for (int i = 0; i < PMAX; i += 4) {
            const Float4 q = load4(v + first + i);
            value[i] = q.x;
            value[i + 1] = q.y;
            value[i + 2] = q.z;
            value[i + 3] = q.w;
          }
        } else {
#pragma unroll
          for (int i = 0; i < PMAX; ++i) value[i] = v[first + i];
        }
#pragma unroll
        for (int j = 0; j < J0MAX; ++j) {
#pragma unroll
          for (int i = 0; i < PMAX; ++i) acc[j][i] = fma32(u[j], value[i], acc[j][i]);
        }
      }
      c.sync();
    }
#pragma unroll
    for (int i = 0; i < PMAX; ++i) {
      const int pos = first + i;
      if (pos >= P.positions) continue;
      const int64_t row = pos >> P.widthLog2;
      const int64_t col = cb * w + (pos & mask);
      if (col >= P.rowLength) continue;
#pragma unroll
      for (int j = 0; j < J0MAX; ++j) {
        if (j < P.j0) out[(j * P.rowsOut + row) * P.rowLength + col] = acc[j][i];
      }
    }
  }
}

// --- Scaling-vector gradient (all in double) --------------------------------

// out[a] = sum_r in[a, r] * l[r]   (l null: ones)
template <typename T, class Ctx>
TERA_DEV void contractLastBody(const Ctx& c, const T* in, int64_t rows, int64_t R, const float* l,
                               double* out) {
  for (int64_t a = c.block() * c.threads() + c.tid(); a < rows; a += c.blocks() * c.threads()) {
    double acc = 0;
    for (int64_t r = 0; r < R; ++r) acc += double(in[a * R + r]) * (l ? double(l[r]) : 1.0);
    out[a] = acc;
  }
}

// partial[b, r] = sum over a in chunk b of weight[a] * s[a, r].
// smem holds `threads` doubles.
template <typename T, class Ctx>
TERA_DEV void weightedColumnPartialBody(const Ctx& c, const double* weight, const T* s,
                                        int64_t rows, int64_t R, int64_t chunk, double* partial,
                                        double* smem) {
  for (int64_t b = c.block(); b * chunk < rows; b += c.blocks()) {
    const int64_t a0 = b * chunk, a1 = a0 + chunk < rows ? a0 + chunk : rows;
    if (R <= c.threads()) {
      const int groups = c.threads() / int(R);
      const int t = c.tid();
      double acc = 0;
      if (t < groups * R) {
        const int64_t r = t % R;
        for (int64_t a = a0 + t / R; a < a1; a += groups) acc += weight[a] * double(s[a * R + r]);
      }
      smem[t] = acc;
      c.sync();
      if (t < R) {
        double total = 0;
        for (int gi = 0; gi < groups; ++gi) total += smem[gi * R + t];
        partial[b * R + t] = total;
      }
      c.sync();
    } else {
      for (int64_t r = c.tid(); r < R; r += c.threads()) {
        double acc = 0;
        for (int64_t a = a0; a < a1; ++a) acc += weight[a] * double(s[a * R + r]);
        partial[b * R + r] = acc;
      }
    }
  }
}

}  // namespace cuda
}  // namespace tera
