#include "core/attention.h"

namespace tera {

void attentionForward(Backend& backend, const AttentionShape& s, const float* q, const float* k,
                      const float* v, const float* keyMask, float* probs, float* out) {
  const int64_t rows = s.group() * s.queryLength;  // query rows per (batch, kv head)
  const int64_t batches = s.batch * s.kvHeads;
  const int64_t qStride = rows * s.headDim, kStride = s.keyLength * s.headDim,
                pStride = rows * s.keyLength;
  backend.gemmStridedBatched(false, true, rows, s.keyLength, s.headDim, s.scale, q, qStride, k,
                             kStride, 0.0f, probs, pStride, batches);
  AttentionMask mask;
  mask.heads = s.heads;
  mask.queryLength = s.queryLength;
  mask.queryOffset = s.queryOffset;
  mask.causal = s.causal;
  mask.keyMask = keyMask;
  backend.softmaxRows(probs, probs, s.batch * s.heads * s.queryLength, s.keyLength, &mask);
  backend.gemmStridedBatched(false, false, rows, s.headDim, s.keyLength, 1.0f, probs, pStride, v,
                             kStride, 0.0f, out, qStride, batches);
}

void attentionBackward(Backend& backend, const AttentionShape& s, const float* q, const float* k,
                       const float* v, const float* probs, const float* dOut, float* workspace,
                       float* dq, float* dk, float* dv) {
  const int64_t rows = s.group() * s.queryLength;
  const int64_t batches = s.batch * s.kvHeads;
  const int64_t qStride = rows * s.headDim, kStride = s.keyLength * s.headDim,
                pStride = rows * s.keyLength;
  if (dv) {  // dv = P^T dOut, summed over the group's query heads
    backend.gemmStridedBatched(true, false, s.keyLength, s.headDim, rows, 1.0f, probs, pStride,
                               dOut, qStride, 0.0f, dv, kStride, batches);
  }
  if (!dq && !dk) return;
  // dS = P * (dP - rowsum(dP * P)) with dP = dOut v^T; masked entries have P = 0.
  backend.gemmStridedBatched(false, true, rows, s.keyLength, s.headDim, 1.0f, dOut, qStride, v,
                             kStride, 0.0f, workspace, pStride, batches);
  backend.softmaxBackward(workspace, probs, workspace, s.batch * s.heads * s.queryLength,
                          s.keyLength);
  if (dq) {  // dq = scale dS k
    backend.gemmStridedBatched(false, false, rows, s.headDim, s.keyLength, s.scale, workspace,
                               pStride, k, kStride, 0.0f, dq, qStride, batches);
  }
  if (dk) {  // dk = scale dS^T q, summed over the group
    backend.gemmStridedBatched(true, false, s.keyLength, s.headDim, rows, s.scale, workspace,
                               pStride, q, qStride, 0.0f, dk, kStride, batches);
  }
}

}  // namespace tera
