// The fused multi-mode product's planner; see tucker_plan.h.
#include "cuda/tucker_plan.h"

#include <algorithm>

namespace tera {
namespace cuda {

int64_t padRow(int64_t x, int64_t q) {
  if (q >= 32) return x;
  int64_t g = 4;
  while (g < q) g <<= 1;
  int64_t s = (x + g - 1) / g * g;
  if ((s / g) % 2 == 0) s += g;
  return s;
}

bool buildGroup(int lo, int hi, const int64_t* d, const int64_t* e, int widthLog2, int jt,
                int batch, bool reuseStage, int64_t maxFloats, const float* const* mats,
                GroupPlan* g) {
  *g = GroupPlan();
  const int64_t w = int64_t(1) << widthLog2;
  g->steps = hi - lo;
  if (g->steps == 0) {  // a tile is one row of w columns, stored in 8 floats
    g->stageFloats = 8 * batch;
    g->loadK = 1;
    g->loadDiv = makeFastDiv(1);
    g->loadStrideP = g->loadStrideK = 8;
    return true;
  }
  int64_t inStrideP = 0, inStrideK = 0, stageFloats = 0, evenNeed = 0, oddNeed = 0;
  int64_t matOffset = 0;
  for (int i = 0; i < g->steps; ++i) {
    const int n = hi - 1 - i;
    const int64_t K = d[n], J = e[n];
    const int64_t P = product(d, lo, n) * batch, Q = product(e, n + 1, hi) * w;
    if (i == 0) {  // the stage, filled by the tile loader
      inStrideK = Q;
      inStrideP = padRow(K * Q, Q);
    }
    // Output rows (p) of J * Q floats; rows grouped by the next step's K.
    const bool last = n == lo;
    const int64_t split = last ? 1 : d[n - 1];
    const int64_t rowStride = last ? (J * Q + 7) / 8 * 8 : padRow(J * Q, Q);
    const int64_t nextQ = J * Q;
    const int64_t groupStride = last ? rowStride : padRow(split * rowStride, nextQ);
    const int64_t inNeed = P * inStrideP;
    const int64_t outNeed = (P / split) * groupStride;
    const int64_t jPad = (J + jt - 1) / jt * jt;
    if (inNeed > maxFloats || outNeed > maxFloats || K * jPad > maxFloats || P * Q > maxFloats) {
      return false;
    }
    if (i == 0) stageFloats = inNeed;
    int64_t& need = i % 2 == 0 ? evenNeed : oddNeed;
    need = std::max(need, outNeed + 4);  // VecK stores round J up to 4
    ModeStep& st = g->step[i];
    st.K = int(K);
    st.J = int(J);
    st.Q = int(Q);
    st.fibers = int(P * Q);
    st.byQ = makeFastDiv(uint32_t(Q));
    st.jBlocks = int(jPad / jt);
    st.byJBlocks = makeFastDiv(uint32_t(st.jBlocks));
    st.inStrideP = int(inStrideP);
    st.inStrideK = int(inStrideK);
    st.outSplit = makeFastDiv(uint32_t(split));
    st.outStrideP2 = int(groupStride);
    st.outStrideP = int(rowStride);
    st.outStrideJ = int(Q);
    st.jPad = int(jPad);
    st.mat = int(matOffset);
    const bool aligned =
        inStrideP % 4 == 0 && inStrideK % 4 == 0 && rowStride % 4 == 0 && groupStride % 4 == 0;
    if (Q == 1 && inStrideK == 1 && inStrideP % 4 == 0 && (last || rowStride % 4 == 0)) {
      st.mode = kStepVecK;
    } else if (Q % 4 == 0 && aligned) {
      st.mode = kStepVecQ;
    } else {
      st.mode = kStepScalar;
    }
    matOffset += K * jPad;
    g->mats[i] = mats[n];
    // The next step reads rows of this output: k stride rowStride, p stride groupStride.
    inStrideK = rowStride;
    inStrideP = groupStride;
  }
  // Multiples of 8 floats: buffers stay 16-byte aligned, and pass B may read a
  // whole group of positions past the last valid one.
  g->matFloats = int(matOffset);
  if (reuseStage) stageFloats = std::max(stageFloats, oddNeed);
  const int64_t bufFloats = reuseStage ? evenNeed : std::max(evenNeed, oddNeed);
  if (stageFloats > maxFloats || bufFloats > maxFloats) return false;
  g->stageFloats = int((stageFloats + 7) / 8 * 8);
  g->bufFloats = int((bufFloats + 7) / 8 * 8);
  g->loadK = g->step[0].K;
  g->loadDiv = makeFastDiv(uint32_t(g->loadK));
  g->loadStrideP = g->step[0].inStrideP;
  g->loadStrideK = g->step[0].inStrideK;
  return true;
}

bool planFused(int order, const int64_t* d, const int64_t* e, const float* const* mats,
               size_t smemLimit, FusedPlan* plan) {
  if (order < 2 || e[0] > 32) return false;
  const int j0max = e[0] <= 8 ? 8 : e[0] <= 16 ? 16 : 32;
  const int64_t positionsCap = int64_t(kPhaseBThreads) * (kPhaseBAccumulators / j0max);
  // Pass A keeps at most ~100 KiB per block so that two or more blocks share an SM.
  const size_t limitA = std::min<size_t>(smemLimit, 100 * 1024);
  for (int s = 1; s < order; ++s) {
    GroupPlan ga;
    if (!buildGroup(s, order, d, e, 0, kPhaseATile, 1, true, int64_t(limitA / 4), mats, &ga)) {
      continue;
    }
    const size_t smemA = smemBytes(ga.matFloats, kPhaseAStages, ga.stageFloats, ga.bufFloats, 1);
    if (smemA > limitA) continue;
    const int64_t sliceIn = product(d, 1, s), rowsOut = product(e, 1, s);
    // Widest column groups first (coalescing), then the largest batch of tiles
    // that fits (more parallel work per step, deeper prefetch).
    for (int trial = 0; trial < 12; ++trial) {
      const int widthLog2 = 3 - trial / 3, batch = 4 >> (trial % 3);
      const int64_t w = int64_t(1) << widthLog2;
      if (rowsOut * w > positionsCap) continue;
      GroupPlan gb;
      if (!buildGroup(1, s, d, e, widthLog2, kPhaseBTile, batch, false, int64_t(smemLimit / 4),
                      mats, &gb)) {
        continue;
      }
      const int64_t u0Offset = gb.matFloats;
      const int64_t matFloatsB = u0Offset + d[0] * j0max;
      const size_t smemB = smemBytes(matFloatsB, kPhaseBStages, gb.stageFloats, gb.bufFloats, 2);
      if (smemB > smemLimit) continue;
      const int64_t slabs = product(d, 0, s), rowLength = product(e, s, order);
      plan->a.g = ga;
      plan->a.slabs = slabs;
      plan->a.slabIn = int(product(d, s, order));
      plan->a.slabOut = int(rowLength);
      plan->a.widthLog2 = widthLog2;
      gb.matFloats = int(matFloatsB);
      plan->b.g = gb;
      plan->b.u0 = mats[0];
      plan->b.k0 = int(d[0]);
      plan->b.j0 = int(e[0]);
      plan->b.u0Offset = int(u0Offset);
      plan->b.widthLog2 = widthLog2;
      plan->b.batch = batch;
      plan->b.vStride = gb.steps == 0 ? 8 : gb.step[gb.steps - 1].outStrideP;
      plan->b.sliceIn = int(sliceIn);
      plan->b.positions = int(rowsOut * w);
      plan->b.rowsOut = rowsOut;
      plan->b.rowsIn = slabs;
      plan->b.rowLength = rowLength;
      plan->b.colBlocks = (rowLength + w - 1) / w;
      plan->smemA = smemA;
      plan->smemB = smemB;
      plan->j0max = j0max;
      plan->stagedFloats = plan->b.colBlocks * slabs * w;
      return true;
    }
  }
  return false;
}

}  // namespace cuda
}  // namespace tera
