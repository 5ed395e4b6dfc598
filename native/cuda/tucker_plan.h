// Host-side planner of the fused multi-mode product (tucker_kernels.cuh): the
// parameter blocks its two passes read, and planFused, which lays a problem out
// in shared memory or says that it does not fit (the backend then runs a chain
// of cuBLAS GEMMs). Host-only C++: the planner's unit tests
// (native/tests/tucker_plan_test.cc) build without CUDA.
//
// A plan splits the modes at s: pass A applies the trailing modes [s, N) to one
// slab X[a, :] per block, pass B the leading modes [0, s) to column groups of
// w = 2^widthLog2 columns, `batch` tiles (consecutive indices of mode 0) at a
// time. The search takes the smallest s whose pass A fits, then the widest w
// and the largest batch whose pass B fits, so the result is deterministic.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/shape.h"
#include "cuda/fast_div.h"

namespace tera {
namespace cuda {

constexpr int kPhaseAThreads = 256;
constexpr int kPhaseBThreads = 512;
constexpr int kPhaseAStages = 2;         // slabs in flight per block
constexpr int kPhaseBStages = 2;         // batches of tiles in flight per block
constexpr int kPhaseATile = 8;           // JT: outputs per thread tile in pass A
constexpr int kPhaseBTile = 4;           // and in pass B (its accumulators need the registers)
constexpr int kPhaseBAccumulators = 64;  // registers per thread for the output columns

// How a step's threads read their 4 fibers.
enum StepMode {
  kStepScalar = 0,  // any layout: 4 fibers 32 apart, one float each per k
  kStepVecQ = 1,    // Q % 4 == 0: 4 consecutive q of one p, one 16-byte load per k
  kStepVecK = 2     // Q == 1: fibers are rows, 16-byte loads along k
};

// One mode applied inside a block: in [P, K, Q] -> out [P, J, Q], q contiguous.
// Input (p, k, q) is at p * inStrideP + k * inStrideK + q; output (p, j, q) at
// (p / outSplit) * outStrideP2 + (p % outSplit) * outStrideP + j * outStrideJ + q
// (outSplit is the next step's K, so the next step sees rows of stride
// outStrideP and row groups of stride outStrideP2).
struct ModeStep {
  int K = 0, J = 0, Q = 1;
  int mode = kStepScalar;
  int fibers = 0;  // P * Q
  FastDiv byQ;
  int jBlocks = 1;  // ceil(J / JT)
  FastDiv byJBlocks;
  int inStrideP = 0, inStrideK = 0;
  FastDiv outSplit;
  int outStrideP2 = 0, outStrideP = 0, outStrideJ = 0;
  int jPad = 0;  // row length of the transposed matrix: J rounded up to JT
  int mat = 0;   // float offset of this mode's zero-padded M^T [K][jPad] in shared memory
};

// A group of consecutive modes applied by one block, last mode first.
struct GroupPlan {
  int steps = 0;
  ModeStep step[kMaxOrder];
  const float* mats[kMaxOrder] = {};  // global [J][K] row-major, per step
  int matFloats = 0;                  // shared matrix area (phase B adds M_0^T)
  int stageFloats = 0;                // one input stage, in the first step's layout
  int bufFloats = 0;                  // a ping-pong buffer (pass A: one, plus the consumed stage)
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
  int batch = 1;          // tiles (consecutive r0) per batch
  int vStride = 0;        // distance between the tiles' results in the result buffer
  int sliceIn = 0;        // rows of one tile: prod in-dims [1, s)
  int positions = 0;      // outputs per r0 and block: prod out-dims [1, s) * w
  int64_t rowsOut = 0;    // prod out-dims [1, s)
  int64_t rowsIn = 0;     // prod in-dims [0, s): rows of T
  int64_t rowLength = 0;  // columns of T and Y
  int64_t colBlocks = 0;
  const float* base = nullptr;  // when set, Y = base + the product (same layout as Y)
};

struct FusedPlan {
  PhaseAParams a;
  PhaseBParams b;
  size_t smemA = 0, smemB = 0;  // dynamic shared memory of each pass, bytes
  int j0max = 8;                // pass B's register tile over mode 0's outputs: 8, 16 or 32
  int64_t stagedFloats = 0;     // the staging tensor T between the passes
};

inline int64_t product(const int64_t* dims, int begin, int end) {
  int64_t p = 1;
  for (int i = begin; i < end; ++i) p *= dims[i];
  return p;
}

// Stride >= x for rows of q contiguous floats (q < 32), chosen so that the
// rows a warp touches start in different banks and stay 16-byte aligned: an
// odd multiple of max(4, the power of two >= q). Wider rows are left compact.
int64_t padRow(int64_t x, int64_t q);

// Plans modes [lo, hi) (applied hi-1 first) on `batch` stacked tiles of
// 2^widthLog2 columns, with JT outputs per thread tile. Even steps write buffer
// A, odd steps buffer B, which is the consumed stage itself when reuseStage
// (pass A) and a second buffer of bufFloats otherwise. The last step's result
// has one row per tile, padded to a multiple of 8 floats. False when a buffer
// exceeds maxFloats.
bool buildGroup(int lo, int hi, const int64_t* d, const int64_t* e, int widthLog2, int jt,
                int batch, bool reuseStage, int64_t maxFloats, const float* const* mats,
                GroupPlan* g);

// Dynamic shared memory of a pass: matrices, `stages` input stages and `bufs`
// ping-pong buffers.
inline size_t smemBytes(int64_t mats, int stages, int64_t stage, int64_t buf, int bufs) {
  return size_t(mats + stages * stage + bufs * buf) * sizeof(float);
}

// Plans Y = X x_1 M_1 ... x_N M_N for X of dims d[0, order) and M_n of shape
// [e[n], d[n]] (device pointers, copied into the plan) within smemLimit bytes of
// shared memory per block (pass A keeps to 100 KiB). False when the fused
// kernels cannot run it: order < 2, e[0] > 32, or no layout fits.
bool planFused(int order, const int64_t* d, const int64_t* e, const float* const* mats,
               size_t smemLimit, FusedPlan* plan);

}  // namespace cuda
}  // namespace tera
