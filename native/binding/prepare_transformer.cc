// Preparers of the transformer kernels: embedding lookup and scatter-add,
// LayerNorm / RMSNorm, the row softmax, attention, rotary embeddings, permutes
// and block copies. Sizes come as separate integers and every storage length is
// checked against their (overflow-checked) products; outputs that the kernel
// writes while still reading an input must not share that input's memory,
// while the elementwise-safe ones (norm and softmax outputs, rope) may.
#include <cmath>
#include <limits>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "binding/job.h"
#include "core/attention.h"
#include "core/errors.h"

namespace tera {
namespace binding {
namespace {

Norm parseNorm(const std::string& name, const char* kernel) {
  if (name == "layer") return Norm::Layer;
  if (name == "rms") return Norm::Rms;
  throw Error(std::string(kernel) + ": unknown norm '" + name + "': expected layer or rms");
}

// BLAS (OpenBLAS, cuBLAS) takes sizes as 32-bit ints.
void blasSize(const char* kernel, const char* what, int64_t size) {
  if (size > std::numeric_limits<int32_t>::max()) {
    throw Error(std::string(kernel) + ": " + what + " = " + std::to_string(size) +
                " exceeds the BLAS 32-bit index limit (2^31 - 1)");
  }
}

Job prepareEmbedding(const Napi::CallbackInfo& info, bool backward) {
  const char* kernel = backward ? "embeddingBackward" : "embeddingForward";
  Arguments args(info, kernel);
  Storage *target = args.storage(0), *source = args.storage(1), *ids = args.storage(2);
  const int64_t count = args.integer(3, 1), vocab = args.integer(4, 1), dim = args.integer(5, 1);
  JobBuilder job(kernel);
  // forward: target = out [count, dim], source = weight [vocab, dim];
  // backward: target = dweight [vocab, dim] (accumulated), source = dy [count, dim].
  job.distinct(target, {source, ids});
  const int64_t tokens = job.product({count, dim}, "[count, dim]");
  const int64_t table = job.product({vocab, dim}, "[vocab, dim]");
  float* pt = job.use(target, backward ? table : tokens, backward ? "dweight" : "output");
  const float* ps = job.use(source, backward ? tokens : table, backward ? "dy" : "weight");
  const float* pi = job.use(ids, count, "ids");
  Backend* backend = &target->backend();
  return job.finish([=] {
    if (backward) {
      backend->embeddingBackward(pt, ps, pi, count, vocab, dim);
    } else {
      backend->embeddingForward(pt, ps, pi, count, vocab, dim);
    }
    return kNoResult;
  });
}

Job prepareEmbeddingForward(const Napi::CallbackInfo& info) {
  return prepareEmbedding(info, false);
}
Job prepareEmbeddingBackward(const Napi::CallbackInfo& info) {
  return prepareEmbedding(info, true);
}

Job prepareNormForward(const Napi::CallbackInfo& info) {
  Arguments args(info, "normForward");
  const Norm norm = parseNorm(args.string(0), "normForward");
  Storage *y = args.storage(1), *stats = args.optionalStorage(2), *x = args.storage(3);
  Storage *weight = args.optionalStorage(4), *bias = args.optionalStorage(5);
  const int64_t rows = args.integer(6, 1), cols = args.integer(7, 1);
  const double eps = args.number(8);
  if (!(eps >= 0 && eps <= std::numeric_limits<float>::max())) {
    throw Error("normForward: eps must be a finite number >= 0, got " + std::to_string(eps));
  }
  if (norm == Norm::Rms && bias) throw Error("normForward: RMSNorm takes no bias");
  JobBuilder job("normForward");
  job.distinct(y, {weight, bias, stats});  // y may be x: each row is read before it is written
  job.distinct(stats, {x, weight, bias}, "stats");
  const int64_t size = job.product({rows, cols}, "x [rows, cols]");
  float* py = job.use(y, size, "y");
  float* pstats = job.use(stats, 2 * rows, "stats");
  const float* px = job.use(x, size, "x");
  const float* pw = job.use(weight, cols, "weight");
  const float* pb = job.use(bias, cols, "bias");
  Backend* backend = &y->backend();
  return job.finish([=] {
    backend->normForward(norm, py, pstats, px, pw, pb, rows, cols, float(eps));
    return kNoResult;
  });
}

Job prepareNormBackward(const Napi::CallbackInfo& info) {
  Arguments args(info, "normBackward");
  const Norm norm = parseNorm(args.string(0), "normBackward");
  Storage *dx = args.optionalStorage(1), *dweight = args.optionalStorage(2),
          *dbias = args.optionalStorage(3);
  Storage *dy = args.storage(4), *x = args.storage(5), *weight = args.optionalStorage(6),
          *stats = args.storage(7);
  const int64_t rows = args.integer(8, 1), cols = args.integer(9, 1);
  if (norm == Norm::Rms && dbias) throw Error("normBackward: RMSNorm has no bias gradient");
  if (dweight && !weight)
    throw Error("normBackward: dweight needs the weight it is the gradient of");
  JobBuilder job("normBackward");
  job.distinct(dx, {x, weight, stats, dweight, dbias}, "dx");  // dx may be dy
  job.distinct(dweight, {dy, x, weight, stats, dbias}, "dweight");
  job.distinct(dbias, {dy, x, weight, stats}, "dbias");
  const int64_t size = job.product({rows, cols}, "x [rows, cols]");
  float* pdx = job.use(dx, size, "dx");
  float* pdw = job.use(dweight, cols, "dweight");
  float* pdb = job.use(dbias, cols, "dbias");
  const float* pdy = job.use(dy, size, "dy");
  const float* px = job.use(x, size, "x");
  const float* pw = job.use(weight, cols, "weight");
  const float* pstats = job.use(stats, 2 * rows, "stats");
  Backend* backend = &dy->backend();
  return job.finish([=] {
    backend->normBackward(norm, pdx, pdw, pdb, pdy, px, pw, pstats, rows, cols);
    return kNoResult;
  });
}

Job prepareSoftmaxRows(const Napi::CallbackInfo& info) {
  Arguments args(info, "softmaxRows");
  Storage *y = args.storage(0), *x = args.storage(1);
  const int64_t rows = args.integer(2, 1), cols = args.integer(3, 1);
  JobBuilder job("softmaxRows");
  const int64_t size = job.product({rows, cols}, "x [rows, cols]");
  float* py = job.use(y, size, "y");  // y may be x
  const float* px = job.use(x, size, "x");
  Backend* backend = &y->backend();
  return job.finish([=] {
    backend->softmaxRows(py, px, rows, cols, nullptr);
    return kNoResult;
  });
}

Job prepareSoftmaxBackward(const Napi::CallbackInfo& info) {
  Arguments args(info, "softmaxBackward");
  Storage *dx = args.storage(0), *y = args.storage(1), *dy = args.storage(2);
  const int64_t rows = args.integer(3, 1), cols = args.integer(4, 1);
  JobBuilder job("softmaxBackward");
  job.distinct(dx, {y}, "dx");  // dx may be dy
  const int64_t size = job.product({rows, cols}, "y [rows, cols]");
  float* pdx = job.use(dx, size, "dx");
  const float* py = job.use(y, size, "y");
  const float* pdy = job.use(dy, size, "dy");
  Backend* backend = &dx->backend();
  return job.finish([=] {
    backend->softmaxBackward(pdx, py, pdy, rows, cols);
    return kNoResult;
  });
}

// The attention shape from arguments [first, first + 6): batch, heads, kvHeads,
// queryLength, keyLength, headDim; checked for GQA divisibility and BLAS limits.
AttentionShape attentionShape(const Arguments& args, size_t first, const char* kernel,
                              const JobBuilder& job) {
  AttentionShape s;
  s.batch = args.integer(first, 1);
  s.heads = args.integer(first + 1, 1);
  s.kvHeads = args.integer(first + 2, 1);
  s.queryLength = args.integer(first + 3, 1);
  s.keyLength = args.integer(first + 4, 1);
  s.headDim = args.integer(first + 5, 1);
  if (s.heads % s.kvHeads != 0) {
    throw Error(std::string(kernel) + ": " + std::to_string(s.heads) +
                " query heads cannot be shared among " + std::to_string(s.kvHeads) +
                " key/value heads (heads must be a multiple of kvHeads)");
  }
  job.product({s.batch, s.heads, s.queryLength, s.keyLength}, "probs [batch, heads, Tq, Tk]");
  job.product({s.batch, s.heads, s.queryLength, s.headDim}, "q [batch, heads, Tq, headDim]");
  job.product({s.batch, s.kvHeads, s.keyLength, s.headDim}, "k [batch, kvHeads, Tk, headDim]");
  blasSize(kernel, "query rows per key/value head", s.group() * s.queryLength);
  blasSize(kernel, "keyLength", s.keyLength);
  blasSize(kernel, "headDim", s.headDim);
  return s;
}

float attentionScale(const Arguments& args, size_t i, const char* kernel) {
  const double scale = args.number(i);
  if (!(std::abs(scale) <= std::numeric_limits<float>::max())) {
    throw Error(std::string(kernel) + ": scale must be a finite float32 number");
  }
  return float(scale);
}

Job prepareAttentionForward(const Napi::CallbackInfo& info) {
  Arguments args(info, "attentionForward");
  Storage *q = args.storage(0), *k = args.storage(1), *v = args.storage(2),
          *keyMask = args.optionalStorage(3), *probs = args.storage(4), *out = args.storage(5);
  JobBuilder job("attentionForward");
  AttentionShape s = attentionShape(args, 6, "attentionForward", job);
  s.queryOffset = args.integer(12, 0);
  s.causal = args.boolean(13);
  s.scale = attentionScale(args, 14, "attentionForward");
  if (s.causal && s.queryOffset + s.queryLength > s.keyLength) {
    throw Error("attentionForward: causal queries at positions " + std::to_string(s.queryOffset) +
                ".." + std::to_string(s.queryOffset + s.queryLength - 1) + " need " +
                std::to_string(s.queryOffset + s.queryLength) + " keys, got " +
                std::to_string(s.keyLength));
  }
  if (!s.causal && s.queryOffset != 0) {
    throw Error("attentionForward: queryOffset only applies to causal attention");
  }
  job.distinct(out, {q, k, v, keyMask, probs});
  job.distinct(probs, {q, k, v, keyMask}, "probs");
  const float* pq = job.use(q, s.querySize(), "q");
  const float* pk = job.use(k, s.keySize(), "k");
  const float* pv = job.use(v, s.keySize(), "v");
  const float* pm = job.use(keyMask, job.product({s.batch, s.keyLength}, "keyMask"), "keyMask");
  float* pp = job.use(probs, s.probsSize(), "probs");
  float* po = job.use(out, s.querySize(), "output");
  Backend* backend = &q->backend();
  return job.finish([=] {
    attentionForward(*backend, s, pq, pk, pv, pm, pp, po);
    return kNoResult;
  });
}

Job prepareAttentionBackward(const Napi::CallbackInfo& info) {
  Arguments args(info, "attentionBackward");
  Storage *q = args.storage(0), *k = args.storage(1), *v = args.storage(2),
          *probs = args.storage(3), *dOut = args.storage(4), *workspace = args.optionalStorage(5),
          *dq = args.optionalStorage(6), *dk = args.optionalStorage(7),
          *dv = args.optionalStorage(8);
  JobBuilder job("attentionBackward");
  AttentionShape s = attentionShape(args, 9, "attentionBackward", job);
  s.scale = attentionScale(args, 15, "attentionBackward");
  if ((dq || dk) && !workspace) {
    throw Error("attentionBackward: dq and dk need a workspace of batch * heads * Tq * Tk floats");
  }
  const std::vector<Storage*> inputs = {q, k, v, probs, dOut};
  job.distinct(workspace, inputs, "workspace");
  for (const auto& [out, name] :
       {std::pair<Storage*, const char*>{dq, "dq"}, {dk, "dk"}, {dv, "dv"}}) {
    job.distinct(out, inputs, name);
    job.distinct(out, {workspace}, name);
  }
  job.distinct(dq, {dk, dv}, "dq");
  job.distinct(dk, {dv}, "dk");
  const float* pq = job.use(q, s.querySize(), "q");
  const float* pk = job.use(k, s.keySize(), "k");
  const float* pv = job.use(v, s.keySize(), "v");
  const float* pp = job.use(probs, s.probsSize(), "probs");
  const float* pdo = job.use(dOut, s.querySize(), "dOut");
  float* pw = job.use(workspace, s.probsSize(), "workspace");
  float* pdq = job.use(dq, s.querySize(), "dq");
  float* pdk = job.use(dk, s.keySize(), "dk");
  float* pdv = job.use(dv, s.keySize(), "dv");
  Backend* backend = &q->backend();
  return job.finish([=] {
    attentionBackward(*backend, s, pq, pk, pv, pp, pdo, pw, pdq, pdk, pdv);
    return kNoResult;
  });
}

Job prepareRope(const Napi::CallbackInfo& info) {
  Arguments args(info, "rope");
  Storage *y = args.storage(0), *x = args.storage(1), *positions = args.storage(2);
  RopeShape s;
  s.batch = args.integer(3, 1);
  s.heads = args.integer(4, 1);
  s.tokens = args.integer(5, 1);
  s.headDim = args.integer(6, 1);
  s.rotaryDim = args.integer(7, 2);
  s.theta = args.number(8);
  s.positionsPerBatch = args.boolean(9);
  const bool inverse = args.boolean(10);
  if (s.rotaryDim % 2 != 0 || s.rotaryDim > s.headDim) {
    throw Error("rope: rotaryDim must be even and at most headDim " + std::to_string(s.headDim) +
                ", got " + std::to_string(s.rotaryDim));
  }
  if (!(s.theta > 0 && s.theta <= std::numeric_limits<float>::max())) {
    throw Error("rope: theta must be a positive finite float32 number, got " +
                std::to_string(s.theta));
  }
  JobBuilder job("rope");
  job.distinct(y, {positions});  // y may be x: each pair is read before it is written
  const int64_t size = job.product({s.batch, s.heads, s.tokens, s.headDim}, "x");
  float* py = job.use(y, size, "y");
  const float* px = job.use(x, size, "x");
  const float* pp = job.use(
      positions, s.positionsPerBatch ? job.product({s.batch, s.tokens}, "positions") : s.tokens,
      "positions");
  Backend* backend = &y->backend();
  return job.finish([=] {
    backend->rope(py, px, pp, s, inverse);
    return kNoResult;
  });
}

Job preparePermute(const Napi::CallbackInfo& info) {
  Arguments args(info, "permute");
  Storage *y = args.storage(0), *x = args.storage(1);
  const std::vector<int64_t> shape = args.dims(2);
  const std::vector<int64_t> dims = args.integers(3, 0);
  const int rank = int(shape.size());
  if (rank < 1 || rank > kMaxOrder) {
    throw Error("permute: rank must be 1.." + std::to_string(kMaxOrder) + ", got " +
                std::to_string(rank));
  }
  const std::string notPermutation =
      "permute: dims must list each axis 0.." + std::to_string(rank - 1) + " exactly once";
  if (dims.size() != size_t(rank)) throw Error(notPermutation);
  std::vector<bool> seen(size_t(rank), false);
  std::vector<int> axes;
  for (int64_t d : dims) {
    if (d >= rank || seen[size_t(d)]) throw Error(notPermutation);
    seen[size_t(d)] = true;
    axes.push_back(int(d));
  }
  JobBuilder job("permute");
  job.distinct(y, {x});
  const int64_t size = checkedProduct(shape.data(), rank, "permute: x");
  float* py = job.use(y, size, "y");
  const float* px = job.use(x, size, "x");
  Backend* backend = &y->backend();
  return job.finish([=] {
    backend->permute(py, px, shape.data(), axes.data(), rank);
    return kNoResult;
  });
}

Job prepareCopyBlocks(const Napi::CallbackInfo& info) {
  Arguments args(info, "copyBlocks");
  Storage* dst = args.storage(0);
  const int64_t dstOffset = args.integer(1, 0), dstStride = args.integer(2, 1);
  Storage* src = args.storage(3);
  const int64_t srcOffset = args.integer(4, 0), srcStride = args.integer(5, 1);
  const int64_t rows = args.integer(6, 1), cols = args.integer(7, 1);
  JobBuilder job("copyBlocks");
  job.distinct(dst, {src}, "dst");
  // Rows must not overlap, and the last element read or written must lie inside its storage.
  const auto reach = [&](int64_t offset, int64_t stride, const char* what) {
    if (stride < cols) {
      throw Error(std::string("copyBlocks: the ") + what + " stride " + std::to_string(stride) +
                  " is shorter than a row of " + std::to_string(cols) + " values");
    }
    return job.product({rows, stride}, what) - stride + cols + offset;
  };
  const int64_t dstEnd = reach(dstOffset, dstStride, "dst"),
                srcEnd = reach(srcOffset, srcStride, "src");
  float* pd = job.use(dst, -1, "dst");
  const float* ps = job.use(src, -1, "src");
  for (const auto& [storage, end, what] :
       {std::tuple<Storage*, int64_t, const char*>{dst, dstEnd, "dst"}, {src, srcEnd, "src"}}) {
    if (end > storage->length()) {
      throw Error(std::string("copyBlocks: the ") + what + " block ends at element " +
                  std::to_string(end) + " of a storage of " + std::to_string(storage->length()));
    }
  }
  Backend* backend = &dst->backend();
  return job.finish([=] {
    backend->copyBlocks(pd + dstOffset, dstStride, ps + srcOffset, srcStride, rows, cols);
    return kNoResult;
  });
}

}  // namespace

std::vector<KernelEntry> transformerKernels() {
  return {
      {"embeddingForward", prepareEmbeddingForward, false},
      {"embeddingBackward", prepareEmbeddingBackward, false},
      {"normForward", prepareNormForward, false},
      {"normBackward", prepareNormBackward, false},
      {"softmaxRows", prepareSoftmaxRows, false},
      {"softmaxBackward", prepareSoftmaxBackward, false},
      {"attentionForward", prepareAttentionForward, false},
      {"attentionBackward", prepareAttentionBackward, false},
      {"rope", prepareRope, false},
      {"permute", preparePermute, false},
      {"copyBlocks", prepareCopyBlocks, false},
  };
}

}  // namespace binding
}  // namespace tera
