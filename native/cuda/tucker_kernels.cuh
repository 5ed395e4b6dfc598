// Kernel bodies of the fused multi-mode product Y = X x_1 M_1 ... x_N M_N that
// Tucker reconstruction (M_n = A_n diag(l_n), optionally added to a base) and
// the core-space projection of the gradient (M_n = A_n^T) share (tucker_plan.h
// lays them out on the host), the kernels of the scaling-vector gradient, and
// the factored path's Kronecker scaling and its column sums.
//
// Two passes, each reading and writing device memory once:
//  A. trailing modes [s, N): one block per slab X[a, :] (a = leading index),
//     the slab in shared memory (loaded by asynchronous copies one slab ahead),
//     modes applied last first; the result goes to a staging tensor T laid out
//     in column groups of w ([cols/w][rows][w]) so that pass B reads
//     contiguous tiles.
//  B. leading modes [0, s): one block per group of w columns. For each r0 (the
//     index of mode 0) the tile T[r0, :, cols] is brought into shared memory by
//     asynchronous copies, in batches of up to 4 consecutive r0 (contiguous in
//     T) one batch ahead, modes s-1..1 are applied there to the whole batch,
//     and each result is accumulated into registers with column r0 of M_0; at
//     the end the registers hold Y[:, cols], written once.
// Inside a block one mode product in [P, K, Q] -> out [P, J, Q] is a small
// GEMM per p: each thread computes a JT x 4 register tile (JT outputs of 4
// fibers), reading per k one value of each fiber (a 16-byte load when the 4
// fibers are consecutive along q, or 16 bytes along k when Q = 1) and JT
// matrix entries as 16-byte broadcasts from the transposed matrix. Row and
// row-group strides are padded (see padRow) so that the fibers of a warp fall
// in distinct banks.
#pragma once

#include "cuda/kernel_common.cuh"
#include "cuda/tucker_plan.h"

namespace tera {
namespace cuda {

template <class Ctx>
TERA_DEV void loadGroupMats(const Ctx& c, const GroupPlan& g, float* mats) {
  for (int s = 0; s < g.steps; ++s) {
    const ModeStep& st = g.step[s];
    const int count = st.K * st.jPad;
    for (int idx = c.tid(); idx < count; idx += c.threads()) {
      const int k = idx / st.jPad, j = idx - k * st.jPad;
      mats[st.mat + idx] = j < st.J ? g.mats[s][int64_t(j) * st.K + k] : 0.0f;
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

TERA_DEV float lane4(const Float4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

// acc[j][f] += u[j] * x[f] for the JT matrix entries of row k.
template <int JT>
TERA_DEV void tileUpdate(float (&acc)[JT][4], const float* u, const float (&x)[4]) {
#pragma unroll
  for (int j = 0; j < JT; j += 4) {
    const Float4 w = load4(u + j);
#pragma unroll
    for (int f = 0; f < 4; ++f) {
      acc[j][f] = fma32(w.x, x[f], acc[j][f]);
      acc[j + 1][f] = fma32(w.y, x[f], acc[j + 1][f]);
      acc[j + 2][f] = fma32(w.z, x[f], acc[j + 2][f]);
      acc[j + 3][f] = fma32(w.w, x[f], acc[j + 3][f]);
    }
  }
}

// One mode product inside the block. Work units are (group of 128 fibers,
// block of JT outputs, lane); a warp shares its group and output block, so the
// matrix loads are broadcasts and the fiber loads cover distinct banks.
// Not inlined: each mode's code then gets the registers on its own.
template <int JT, int MODE, class Ctx>
TERA_DEV_NOINLINE void tileStep(const Ctx& c, const ModeStep& st, const float* in, float* out,
                                const float* matT) {
  const int units = ((st.fibers + 127) >> 7) * st.jBlocks * 32;
  for (int unit = c.tid(); unit < units; unit += c.threads()) {
    const int lane = unit & 31, rest = unit >> 5;
    const int group = int(fastDiv(st.byJBlocks, uint32_t(rest)));
    const int j0 = (rest - group * st.jBlocks) * JT;
    const float* u = matT + j0;
    float acc[JT][4];
#pragma unroll
    for (int j = 0; j < JT; ++j) {
#pragma unroll
      for (int f = 0; f < 4; ++f) acc[j][f] = 0.0f;
    }
    if constexpr (MODE == kStepVecQ) {
      const int f0 = (group << 7) + (lane << 2);
      if (f0 >= st.fibers) continue;
      const int p = int(fastDiv(st.byQ, uint32_t(f0)));
      const int q = f0 - p * st.Q;
      const float* src = in + p * st.inStrideP + q;
      for (int k = 0; k < st.K; ++k) {
        const Float4 v = load4(src + k * st.inStrideK);
        const float x[4] = {v.x, v.y, v.z, v.w};
        tileUpdate<JT>(acc, u + k * st.jPad, x);
      }
      const int pg = int(fastDiv(st.outSplit, uint32_t(p)));
      float* dst = out + pg * st.outStrideP2 + (p - pg * int(st.outSplit.d)) * st.outStrideP + q;
#pragma unroll
      for (int j = 0; j < JT; ++j) {
        if (j0 + j < st.J) {
          store4(dst + (j0 + j) * st.outStrideJ, {acc[j][0], acc[j][1], acc[j][2], acc[j][3]});
        }
      }
    } else if constexpr (MODE == kStepVecK) {
      // Q == 1: fiber f of this unit is row p = group * 128 + lane + 32 f.
      int src[4];
      bool valid[4];
#pragma unroll
      for (int f = 0; f < 4; ++f) {
        const int p = (group << 7) + lane + 32 * f;
        valid[f] = p < st.fibers;
        src[f] = (valid[f] ? p : 0) * st.inStrideP;
      }
      int k = 0;
      for (; k + 4 <= st.K; k += 4) {
        Float4 v[4];
#pragma unroll
        for (int f = 0; f < 4; ++f) v[f] = valid[f] ? load4(in + src[f] + k) : Float4{0, 0, 0, 0};
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
          const float x[4] = {lane4(v[0], kk), lane4(v[1], kk), lane4(v[2], kk), lane4(v[3], kk)};
          tileUpdate<JT>(acc, u + (k + kk) * st.jPad, x);
        }
      }
      for (; k < st.K; ++k) {
        float x[4];
#pragma unroll
        for (int f = 0; f < 4; ++f) x[f] = valid[f] ? in[src[f] + k] : 0.0f;
        tileUpdate<JT>(acc, u + k * st.jPad, x);
      }
      // Rows hold J contiguous outputs (outStrideJ == 1) with room up to a multiple of 4.
#pragma unroll
      for (int f = 0; f < 4; ++f) {
        if (!valid[f]) continue;
        const int p = (group << 7) + lane + 32 * f;
        const int pg = int(fastDiv(st.outSplit, uint32_t(p)));
        float* dst = out + pg * st.outStrideP2 + (p - pg * int(st.outSplit.d)) * st.outStrideP + j0;
#pragma unroll
        for (int j = 0; j < JT; j += 4) {
          if (j0 + j < st.J)
            store4(dst + j, {acc[j][f], acc[j + 1][f], acc[j + 2][f], acc[j + 3][f]});
        }
      }
    } else {
      int inOffset[4], outOffset[4];
      bool valid[4];
#pragma unroll
      for (int f = 0; f < 4; ++f) {
        const int fiber = (group << 7) + lane + 32 * f;
        valid[f] = fiber < st.fibers;
        const int safe = valid[f] ? fiber : 0;
        const int p = int(fastDiv(st.byQ, uint32_t(safe)));
        const int q = safe - p * st.Q;
        const int pg = int(fastDiv(st.outSplit, uint32_t(p)));
        inOffset[f] = p * st.inStrideP + q;
        outOffset[f] = pg * st.outStrideP2 + (p - pg * int(st.outSplit.d)) * st.outStrideP + q;
      }
      for (int k = 0; k < st.K; ++k) {
        float x[4];
#pragma unroll
        for (int f = 0; f < 4; ++f) x[f] = valid[f] ? in[inOffset[f] + k * st.inStrideK] : 0.0f;
        tileUpdate<JT>(acc, u + k * st.jPad, x);
      }
#pragma unroll
      for (int f = 0; f < 4; ++f) {
        if (!valid[f]) continue;
#pragma unroll
        for (int j = 0; j < JT; ++j) {
          if (j0 + j < st.J) out[outOffset[f] + (j0 + j) * st.outStrideJ] = acc[j][f];
        }
      }
    }
  }
}

// Applies every step of the group (the first reads `stage`); even steps write
// bufA and odd steps bufB, with a barrier after each. Returns the buffer
// holding the result.
template <int JT, class Ctx>
TERA_DEV const float* runGroupSteps(const Ctx& c, const GroupPlan& g, const float* stage,
                                    float* bufA, float* bufB, const float* mats) {
  const float* src = stage;
  for (int s = 0; s < g.steps; ++s) {
    const ModeStep& st = g.step[s];
    float* dst = s & 1 ? bufB : bufA;
    const float* mat = mats + st.mat;
    switch (st.mode) {
      case kStepVecQ:
        tileStep<JT, kStepVecQ>(c, st, src, dst, mat);
        break;
      case kStepVecK:
        tileStep<JT, kStepVecK>(c, st, src, dst, mat);
        break;
      default:
        tileStep<JT, kStepScalar>(c, st, src, dst, mat);
        break;
    }
    c.sync();
    src = dst;
  }
  return src;
}

// Pass A. Shared memory: matrices, kPhaseAStages input stages, two buffers.
template <class Ctx>
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
    // The consumed stage doubles as the second ping-pong buffer once the first
    // step has read it (the planner sized it for the odd steps' outputs).
    float* stage = stages + iteration % kPhaseAStages * g.stageFloats;
    const float* result = runGroupSteps<kPhaseATile>(c, g, stage, buf, stage, mats);
    // T[a, col] lives at ((col / w) * slabs + a) * w + col % w.
    for (int e = c.tid(); e < P.slabOut; e += c.threads()) {
      const int64_t group = e >> P.widthLog2;
      staged[(group * P.slabs + slab) * w + (e & mask)] = result[e];
    }
    c.sync();
  }
}

// Pass B. Shared memory: matrices (and M_0^T), kPhaseBStages batch stages, two
// buffers.
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
  const int batches = (P.k0 + P.batch - 1) / P.batch;
  const int first = c.tid() * PMAX;
  for (int64_t cb = c.block(); cb < P.colBlocks; cb += c.blocks()) {
    const float* base = staged + cb * P.rowsIn * w;
    // Batch b holds tiles r0 = b * batch ... (only those below k0 are loaded).
    auto issueBatch = [&](int b) {
      const int r0 = b * P.batch;
      const int tiles = P.k0 - r0 < P.batch ? P.k0 - r0 : P.batch;
      issueTileLoad(c, g, base + int64_t(r0) * tileFloats, tiles * tileFloats, P.widthLog2,
                    stages + b % kPhaseBStages * g.stageFloats);
    };
    float acc[J0MAX][PMAX];
#pragma unroll
    for (int j = 0; j < J0MAX; ++j) {
#pragma unroll
      for (int i = 0; i < PMAX; ++i) acc[j][i] = 0.0f;
    }
    for (int b = 0; b < kPhaseBStages - 1; ++b) {
      if (b < batches) issueBatch(b);
      asyncCommit();
    }
    for (int b = 0; b < batches; ++b) {
      if (b + kPhaseBStages - 1 < batches) issueBatch(b + kPhaseBStages - 1);
      asyncCommit();
      asyncWait<kPhaseBStages - 1>();
      c.sync();
      const float* v = runGroupSteps<kPhaseBTile>(c, g, stages + b % kPhaseBStages * g.stageFloats,
                                                  buf, buf + g.bufFloats, mats);
      for (int t = 0; t < P.batch; ++t) {
        const int r0 = b * P.batch + t;
        if (r0 >= P.k0) break;
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
        if (first < P.positions) {  // rows are padded to a multiple of 8 floats
          const float* tile = v + t * P.vStride;
          float value[PMAX];
          if constexpr (PMAX % 4 == 0) {
#pragma unroll
            for (int i = 0; i < PMAX; i += 4) {
              const Float4 q = load4(tile + first + i);
              value[i] = q.x;
              value[i + 1] = q.y;
              value[i + 2] = q.z;
              value[i + 3] = q.w;
            }
          } else {
#pragma unroll
            for (int i = 0; i < PMAX; ++i) value[i] = tile[first + i];
          }
#pragma unroll
          for (int j = 0; j < J0MAX; ++j) {
#pragma unroll
            for (int i = 0; i < PMAX; ++i) acc[j][i] = fma32(u[j], value[i], acc[j][i]);
          }
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
        if (j >= P.j0) continue;
        const int64_t at = (j * P.rowsOut + row) * P.rowLength + col;
        out[at] = P.base ? P.base[at] + acc[j][i] : acc[j][i];
      }
    }
  }
}

// --- The factored path's scalings ----------------------------------------------

// y[t, r] = x[t, r] * float(alpha * s_0[r_0] * ... * s_{Q-1}[r_{Q-1}]), the
// product in double taken in mode order, as the CPU's kronecker() builds it.
struct KroneckerScaleOp {
  const float* x;
  float* y;
  int64_t cols = 1;
  int order = 0;
  int64_t ranks[kMaxOrder] = {};
  const float* scales[kMaxOrder] = {};
  float alpha = 1.0f;
  TERA_DEV void operator()(int64_t i) const {
    int64_t rest = i % cols, index[kMaxOrder];
    for (int n = order - 1; n >= 0; --n) {
      index[n] = rest % ranks[n];
      rest /= ranks[n];
    }
    double lambda = 1.0;
    for (int n = 0; n < order; ++n)
      lambda = lambda * (scales[n] ? double(scales[n][index[n]]) : 1.0);
    y[i] = x[i] * float(double(alpha) * lambda);
  }
};

// out[r] = alpha * sum_t a[t, r] b[t, r] in double, t in order (one thread per
// column, so the sum is the CPU's to the last bit).
template <class Ctx>
TERA_DEV void columnDotsBody(const Ctx& c, const float* a, const float* b, int64_t rows,
                             int64_t cols, float alpha, double* out) {
  for (int64_t r = c.block() * c.threads() + c.tid(); r < cols; r += c.blocks() * c.threads()) {
    double acc = 0;
    for (int64_t t = 0; t < rows; ++t) acc += double(a[t * cols + r]) * double(b[t * cols + r]);
    out[r] = double(alpha) * acc;
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
