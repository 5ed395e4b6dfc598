// Invariants of the fused Tucker planner (native/cuda/tucker_plan.h), checked
// on the plan alone, without running a kernel: for random shapes of orders 2-8
// (modes of size 1 and 43 included) under shared-memory limits from the
// device's down to where nothing fits,
//  - every plan fits its limit (pass A also 100 KiB), and every buffer starts
//    16-byte aligned;
//  - each mode step's preconditions for its vector loads hold;
//  - each step reads inside its input buffer and writes inside its output
//    buffer, writes every output element to a distinct address, and the next
//    step reads each element exactly where this one wrote it;
//  - the tile loader fills exactly the first step's input;
//  - pass A writes each element of the staging tensor T once, pass B's tiles
//    partition T, every output position has an owner thread, and the
//    (column group, position) pairs cover every element of Y exactly once;
//  - a smaller limit never gives a plan earlier in the search order (it only
//    rules layouts out), and mode 0 wider than 32 is never fused;
// plus the arithmetic helpers (FastDiv, padRow). Prints failures and ends with
// "N passed, M failed"; exit status 1 on any failure.
#include "cuda/tucker_plan.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "core/shape.h"

using namespace tera;
using namespace tera::cuda;

namespace {

int64_t checks = 0, failures = 0;

void expect(bool ok, const std::string& what) {
  ++checks;
  if (ok) return;
  if (++failures <= 40) std::printf("FAIL %s\n", what.c_str());
}

std::string describe(const std::vector<int64_t>& d, const std::vector<int64_t>& e, int limit) {
  return formatShape(d.data(), int(d.size())) + " -> " + formatShape(e.data(), int(e.size())) +
         " limit " + std::to_string(limit);
}

// Offsets in float units; a buffer is [begin, begin + floats).
struct Region {
  int64_t begin, floats;
};

// Checks one group's steps: bounds, vector preconditions, injectivity, and that
// step i + 1 reads what step i wrote. `input` is where the first step reads,
// `even` / `odd` where even / odd steps write. Returns the last step's output.
Region checkGroup(const GroupPlan& g, int jt, Region input, Region even, Region odd,
                  const std::string& name) {
  Region in = input;
  std::vector<int64_t> written;  // the previous step's output addresses, by element
  for (int s = 0; s < g.steps; ++s) {
    const ModeStep& st = g.step[s];
    const std::string at = name + " step " + std::to_string(s);
    const int64_t P = st.fibers / st.Q, K = st.K, J = st.J, Q = st.Q;
    expect(int64_t(P) * Q == st.fibers, at + ": fibers = P * Q");
    expect(st.jPad == st.jBlocks * jt && st.jPad >= J && st.jPad - J < jt,
           at + ": the matrix rows are padded to whole thread tiles");
    if (st.mode == kStepVecQ) {
      expect(Q % 4 == 0 && st.inStrideP % 4 == 0 && st.inStrideK % 4 == 0 &&
                 st.outStrideP % 4 == 0 && st.outStrideP2 % 4 == 0,
             at + ": 16-byte loads along q are aligned");
    }
    if (st.mode == kStepVecK) {
      expect(Q == 1 && st.inStrideK == 1 && st.inStrideP % 4 == 0 && st.outStrideJ == 1,
             at + ": 16-byte loads along k are aligned");
    }
    // Reads: element (p, k, q) of the input; it must be where the previous step wrote.
    int64_t maxRead = 0;
    bool matches = true;
    for (int64_t p = 0; p < P; ++p) {
      for (int64_t k = 0; k < K; ++k) {
        for (int64_t q = 0; q < Q; ++q) {
          const int64_t offset = p * st.inStrideP + k * st.inStrideK + q;
          maxRead = std::max(maxRead, offset);
          if (!written.empty()) matches = matches && written[size_t((p * K + k) * Q + q)] == offset;
        }
      }
    }
    expect(maxRead < in.floats, at + ": reads stay inside the input buffer");
    if (!written.empty()) expect(matches, at + ": reads each element where the last step wrote it");
    // Writes: element (p, j, q) of the output, in the order the next step reads it
    // (its p = p / split, k = p % split, q = j * Q + q).
    const Region out = s % 2 == 0 ? even : odd;
    const int64_t split = st.outSplit.d;
    std::vector<int64_t> next(size_t(P * J * Q));
    std::set<int64_t> seen;
    int64_t maxWrite = 0;
    for (int64_t p = 0; p < P; ++p) {
      for (int64_t j = 0; j < J; ++j) {
        for (int64_t q = 0; q < Q; ++q) {
          const int64_t offset =
              (p / split) * st.outStrideP2 + (p % split) * st.outStrideP + j * st.outStrideJ + q;
          maxWrite = std::max(maxWrite, offset);
          seen.insert(offset);
          next[size_t(((p / split) * split + p % split) * J * Q + j * Q + q)] = offset;
        }
      }
    }
    // Row-vector stores round J up to 4 (kStepVecK).
    const int64_t slack = st.mode == kStepVecK ? (4 - J % 4) % 4 : 0;
    expect(maxWrite + slack < out.floats, at + ": writes stay inside the output buffer");
    expect(int64_t(seen.size()) == P * J * Q, at + ": every output element has its own address");
    written = std::move(next);
    in = out;
  }
  return g.steps == 0 ? input : in;
}

void checkPlan(const std::vector<int64_t>& d, const std::vector<int64_t>& e, int limit,
               const FusedPlan& plan) {
  const int N = int(d.size());
  const std::string name = describe(d, e, limit);
  const PhaseAParams& A = plan.a;
  const PhaseBParams& B = plan.b;
  const int s = N - A.g.steps;  // the split: pass A applies [s, N), pass B [0, s)
  expect(s >= 1 && s < N && B.g.steps == s - 1, name + ": the passes split the modes");
  const size_t limitA = std::min<size_t>(size_t(limit), 100 * 1024);
  expect(plan.smemA <= limitA, name + ": pass A fits its shared memory");
  expect(plan.smemB <= size_t(limit), name + ": pass B fits its shared memory");
  expect(plan.smemA == smemBytes(A.g.matFloats, kPhaseAStages, A.g.stageFloats, A.g.bufFloats, 1),
         name + ": pass A's shared memory is its matrices, stages and buffer");
  expect(plan.smemB == smemBytes(B.g.matFloats, kPhaseBStages, B.g.stageFloats, B.g.bufFloats, 2),
         name + ": pass B's shared memory is its matrices, stages and buffers");
  for (const GroupPlan* g : {&A.g, &B.g}) {
    expect(g->matFloats % 4 == 0 && g->stageFloats % 8 == 0 && g->bufFloats % 8 == 0,
           name + ": every shared buffer starts 16-byte aligned");
  }
  const int64_t w = int64_t(1) << B.widthLog2;
  expect(A.widthLog2 == B.widthLog2, name + ": both passes use one column-group width");
  expect(A.slabs == product(d.data(), 0, s) && A.slabIn == product(d.data(), s, N) &&
             A.slabOut == product(e.data(), s, N),
         name + ": pass A's slabs are the trailing modes");
  expect(B.k0 == d[0] && B.j0 == e[0] && plan.j0max >= e[0] && plan.j0max % 8 == 0,
         name + ": pass B's register tile holds mode 0's outputs");

  // Pass A: [matrices | stage 0 | stage 1 | buffer]; odd steps write the consumed stage.
  const Region stage = {A.g.matFloats, A.g.stageFloats};
  const Region bufA = {A.g.matFloats + kPhaseAStages * A.g.stageFloats, A.g.bufFloats};
  Region result = checkGroup(A.g, kPhaseATile, stage, bufA, stage, name + " pass A");
  expect(result.floats >= A.slabOut, name + ": pass A's result holds a slab's outputs");
  // The loader fills each (p, k) row of the first step's input once, inside the stage.
  if (A.g.steps > 0) {
    std::set<int64_t> loaded;
    for (int64_t row = 0; row < A.slabIn; ++row) {
      const int64_t p = row / A.g.loadK, k = row % A.g.loadK;
      loaded.insert(p * A.g.loadStrideP + k * A.g.loadStrideK);
    }
    expect(int64_t(loaded.size()) == A.slabIn && *loaded.rbegin() < A.g.stageFloats,
           name + ": pass A's loader fills the first step's input once");
  }
  // T[a, col] at ((col / w) * slabs + a) * w + col % w: once each, inside T.
  expect(plan.stagedFloats == B.colBlocks * B.rowsIn * w && B.rowsIn == A.slabs &&
             B.colBlocks * w >= B.rowLength && (B.colBlocks - 1) * w < B.rowLength,
         name + ": T holds whole column groups of every slab");

  // Pass B: [matrices, M_0^T | stage 0 | stage 1 | buffer A | buffer B].
  expect(B.u0Offset + int64_t(B.k0) * plan.j0max <= B.g.matFloats,
         name + ": M_0^T fits after pass B's matrices");
  const int64_t tileFloats = B.sliceIn * w;
  expect(B.sliceIn == product(d.data(), 1, s) && B.rowsIn == int64_t(B.k0) * B.sliceIn,
         name + ": pass B's tiles partition T by the index of mode 0");
  std::set<int64_t> loaded;
  for (int64_t i = 0; i < B.batch * tileFloats; ++i) {
    const int64_t row = i >> B.widthLog2, p = row / B.g.loadK, k = row % B.g.loadK;
    loaded.insert(p * B.g.loadStrideP + k * B.g.loadStrideK + (i & (w - 1)));
  }
  expect(int64_t(loaded.size()) == B.batch * tileFloats && *loaded.rbegin() < B.g.stageFloats,
         name + ": pass B's loader puts a batch of tiles in a stage, each float once");
  const Region stageB = {B.g.matFloats, B.g.stageFloats};
  const Region bufB0 = {B.g.matFloats + kPhaseBStages * B.g.stageFloats, B.g.bufFloats};
  const Region bufB1 = {bufB0.begin + B.g.bufFloats, B.g.bufFloats};
  result = checkGroup(B.g, kPhaseBTile, stageB, bufB0, bufB1, name + " pass B");
  // Tile t's result row is read at t * vStride + position, positions padded to
  // whole register groups: inside the result buffer.
  const int pmax = kPhaseBAccumulators / plan.j0max;
  const int64_t lastRead =
      (B.batch - 1) * int64_t(B.vStride) + (B.positions + pmax - 1) / pmax * pmax - 1;
  expect(lastRead < result.floats,
         name + ": pass B reads whole register groups inside the result rows");
  expect(pmax % 4 != 0 || (B.vStride % 4 == 0 && result.begin % 4 == 0),
         name + ": pass B's 16-byte reads of the result rows are aligned");
  expect(B.positions == B.rowsOut * w && B.rowsOut == product(e.data(), 1, s),
         name + ": a tile's positions are its output rows times the group width");
  expect(B.positions <= int64_t(kPhaseBThreads) * pmax,
         name + ": every output position has an owner thread");
  // (column group, position) -> Y[j, row, col]: every element once.
  const int64_t total = product(e.data(), 0, N);
  int64_t covered = 0;
  for (int64_t cb = 0; cb < B.colBlocks; ++cb) {
    for (int64_t pos = 0; pos < B.positions; ++pos) {
      if (cb * w + pos % w < B.rowLength) ++covered;
    }
  }
  expect(covered * B.j0 == total && B.rowsOut * B.rowLength * B.j0 == total,
         name + ": pass B writes every element of Y once");
}

// Position of a plan in the search order: s ascending, then w = 8, 4, 2, 1,
// then batch 4, 2, 1 (the GEMM chain after every fused plan).
int64_t searchRank(int order, const FusedPlan* plan) {
  if (!plan) return int64_t(order) * 100;
  const int s = order - plan->a.g.steps;
  const int batchRank = plan->b.batch == 4 ? 0 : plan->b.batch == 2 ? 1 : 2;
  return s * 100 + (3 - plan->b.widthLog2) * 10 + batchRank;
}

void checkShape(const std::vector<int64_t>& d, const std::vector<int64_t>& e,
                std::set<std::string>* reached) {
  const float* mats[kMaxOrder] = {};
  const int N = int(d.size());
  int64_t lastRank = -1;
  for (int limit : {232448, 163840, 102400, 65536, 49152, 32768, 24576, 16384, 12288, 8192, 6144,
                    4096, 3072, 2048, 1536, 1024, 768, 512}) {
    FusedPlan plan;
    const bool fused = planFused(N, d.data(), e.data(), mats, size_t(limit), &plan);
    if (e[0] > 32) expect(!fused, describe(d, e, limit) + ": mode 0 wider than 32 is not fused");
    const int64_t rank = searchRank(N, fused ? &plan : nullptr);
    expect(rank >= lastRank,
           describe(d, e, limit) + ": a smaller limit gives a plan earlier in the search order");
    lastRank = rank;
    if (!fused) continue;
    checkPlan(d, e, limit, plan);
    reached->insert(std::to_string(N) + "/" + std::to_string(N - plan.a.g.steps) + "/" +
                    std::to_string(plan.b.widthLog2) + "/" + std::to_string(plan.b.batch));
  }
}

void checkHelpers() {
  std::mt19937_64 g(42);
  for (uint32_t d = 1; d < 5000; d += d < 100 ? 1 : 37) {
    const FastDiv f = makeFastDiv(d);
    bool ok = true;
    for (int i = 0; i < 2000; ++i) {
      const uint32_t n = i < 1000 ? uint32_t(i) : uint32_t(g() % (uint64_t(1) << 31));
      const uint32_t quotient =
          d == 1 ? n : uint32_t((uint64_t(n) * f.mul) >> 32) >> f.shr;  // the documented formula
      ok = ok && quotient == n / d;
    }
    expect(ok, "FastDiv by " + std::to_string(d) + " gives n / d for n < 2^31");
  }
  for (int64_t q = 1; q < 40; ++q) {
    for (int64_t x = 1; x < 300; ++x) {
      const int64_t s = padRow(x, q);
      if (q >= 32) {
        expect(s == x, "padRow leaves rows of 32 or more floats compact");
        continue;
      }
      int64_t granule = 4;
      while (granule < q) granule *= 2;
      expect(s >= x && s % granule == 0 && (s / granule) % 2 == 1,
             "padRow(" + std::to_string(x) + ", " + std::to_string(q) +
                 ") is an odd multiple of the granule");
    }
  }
}

}  // namespace

int main() {
  checkHelpers();
  std::mt19937_64 g(0x91a2);
  std::set<std::string> reached;
  int shapes = 0;
  for (int round = 0; round < 60; ++round) {
    for (int order = 2; order <= kMaxOrder; ++order) {
      const int64_t wide = order <= 2 ? 48 : order <= 3 ? 20 : order <= 5 ? 8 : 4;
      std::vector<int64_t> d, e;
      int64_t in = 1, out = 1;
      for (int n = 0; n < order; ++n) {
        const uint64_t kind = g() % 10;
        const int64_t a = kind == 0 ? 1 : kind == 1 ? 43 : 2 + int64_t(g() % uint64_t(wide));
        const int64_t b = g() % 3 == 0 ? a : 1 + int64_t(g() % 33);
        d.push_back(a);
        e.push_back(b);
        in *= a;
        out *= b;
      }
      if (in > 20000 || out > 20000) continue;
      checkShape(d, e, &reached);
      checkShape(e, d, &reached);
      ++shapes;
    }
  }
  // The corners: every split, and narrow column groups with batches.
  for (int order = 2; order <= kMaxOrder; ++order) {
    std::vector<int64_t> d(size_t(order - 2), 1);
    d.insert(d.end(), {43, 43});
    checkShape(d, d, &reached);
    ++shapes;
  }
  for (int64_t first : {8, 16, 32}) {
    for (int64_t second : {100, 200, 400, 800}) {
      checkShape({4, 4, 4}, {first, second, 16}, &reached);
      ++shapes;
    }
  }
  std::printf("%d shapes (both directions), %zu distinct plans (order/split/width/batch)\n", shapes,
              reached.size());
  std::printf("%lld passed, %lld failed\n", (long long)(checks - failures), (long long)failures);
  return failures == 0 ? 0 : 1;
}
