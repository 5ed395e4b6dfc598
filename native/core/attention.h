// Scaled-dot-product attention composed from backend kernels: strided-batched
// GEMMs and the masked row softmax. Grouped-query attention costs nothing extra:
// the G = heads / kvHeads query heads that share a key/value head are adjacent
// in q [batch, heads, Tq, D], so each (batch, kv head) is one GEMM whose rows
// are those G * Tq query rows, and the key and value gradients of the group
// are summed by the GEMMs themselves. Both backends run this same code.
#pragma once

#include <cstdint>

#include "core/backend.h"

namespace tera {

struct AttentionShape {
  int64_t batch = 1, heads = 1, kvHeads = 1, queryLength = 1, keyLength = 1, headDim = 1;
  int64_t queryOffset = 0;  // position of the first query among the keys (causal only)
  bool causal = false;
  float scale = 1.0f;  // multiplies q k^T

  int64_t group() const { return heads / kvHeads; }
  // Elements of q / out, of k / v, and of the probabilities [batch, heads, Tq, Tk].
  int64_t querySize() const { return batch * heads * queryLength * headDim; }
  int64_t keySize() const { return batch * kvHeads * keyLength * headDim; }
  int64_t probsSize() const { return batch * heads * queryLength * keyLength; }
};

// probs = softmax(scale q k^T, masked) [batch, heads, Tq, Tk]; out = probs v.
// keyMask is null or [batch, keyLength] of 0/1 (see AttentionMask).
void attentionForward(Backend& backend, const AttentionShape& shape, const float* q, const float* k,
                      const float* v, const float* keyMask, float* probs, float* out);

// The gradients of attentionForward from its probs, each skipped when null:
// dq, dk, dv (overwritten). workspace holds probsSize() floats (needed when dq
// or dk is asked for).
void attentionBackward(Backend& backend, const AttentionShape& shape, const float* q,
                       const float* k, const float* v, const float* probs, const float* dOut,
                       float* workspace, float* dq, float* dk, float* dv);

}  // namespace tera
