"""PyTorch reference for the tera-peft benchmarks and golden files.

The three adapters written from docs/math.md the way a PyTorch user would:
TeRA's update as a chain of tensordots merged into the frozen weight, VeRA and
LoRA as in Hugging Face PEFT (a low-rank branch next to the frozen linear
layer). Autograd computes every gradient. Tensors are named as in PEFT's
adapter files (tera_core, tera_factor_1, tera_lambda_1, vera_A, vera_lambda_b,
lora_A.weight).

The Node side drives this file as a worker: one JSON request per line on
stdin, one JSON reply per line on stdout. The benchmarks (scripts/bench/run.ts)
interleave its timed runs with ours; each timing reply carries the time
measured here, without the round trip. The "golden" request runs one training
step on inputs made by our code and writes the golden file that
scripts/bench/golden.ts describes (npm run goldens).
"""

import ctypes
import json
import os
import struct
import sys
import time

import torch
import torch.nn.functional as F


def tera_update(core, factors, scales, alpha, d_out, d_in):
    """dW = alpha * reshape(G x_1 (A_1 diag(l_1)) ... x_N (A_N diag(l_N)))."""
    x = core
    for factor, scale in zip(factors, scales):
        # Contracts the leading axis (mode n) and appends I_n, so after all N
        # steps the modes are back in order.
        x = torch.tensordot(x, factor * scale, dims=([0], [1]))
    return alpha * x.reshape(d_out, d_in)


class Frozen:
    """y = x W0^T + b with W0 and b frozen: a step computes only dx."""

    def __init__(self, weight, bias):
        self.weight = weight
        self.bias = bias
        self.trainable = {}

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class TeRA(Frozen):
    def __init__(self, weight, bias, core, factors, scales, alpha):
        super().__init__(weight, bias)
        self.core = core
        self.factors = factors
        self.trainable = scales
        self.alpha = alpha

    def forward(self, x):
        d_out, d_in = self.weight.shape
        update = tera_update(self.core, self.factors,
                             list(self.trainable.values()), self.alpha,
                             d_out, d_in)
        return F.linear(x, self.weight + update, self.bias)


class VeRA(Frozen):
    def __init__(self, weight, bias, a, b, lambda_d, lambda_b):
        super().__init__(weight, bias)
        self.a = a
        self.b = b
        self.trainable = {"vera_lambda_b": lambda_b, "vera_lambda_d": lambda_d}

    def forward(self, x):
        lambda_d = self.trainable["vera_lambda_d"]
        lambda_b = self.trainable["vera_lambda_b"]
        update = F.linear(lambda_d * F.linear(x, self.a), self.b)
        return super().forward(x) + lambda_b * update


class LoRA(Frozen):
    def __init__(self, weight, bias, a, b, scaling):
        super().__init__(weight, bias)
        self.trainable = {"lora_A.weight": a, "lora_B.weight": b}
        self.scaling = scaling

    def forward(self, x):
        a = self.trainable["lora_A.weight"]
        b = self.trainable["lora_B.weight"]
        return super().forward(x) + F.linear(F.linear(x, a), b) * self.scaling


def step(layer, x, dy):
    """One step's forward and backward: y, dx and the adapter gradients."""
    for p in layer.trainable.values():
        p.grad = None
    x = x.detach().requires_grad_()
    y = layer.forward(x)
    y.backward(dy)
    return [y.detach(), x.grad] + [p.grad for p in layer.trainable.values()]


def trainable(t):
    return t.detach().clone().requires_grad_()


def make_layer(method, tensors, spec):
    """A layer from tensors named as in PEFT's files, with the update's scale
    from spec (TeRA: alpha; LoRA: scaling = alpha / r)."""
    weight, bias = tensors["weight"], tensors["bias"]
    if method == "frozen":
        return Frozen(weight, bias)
    if method == "tera":
        order = sum(name.startswith("tera_factor_") for name in tensors)
        modes = range(1, order + 1)
        factors = [tensors[f"tera_factor_{n}"] for n in modes]
        scales = {f"tera_lambda_{n}": trainable(tensors[f"tera_lambda_{n}"])
                  for n in modes}
        return TeRA(weight, bias, tensors["tera_core"], factors, scales,
                    spec["alpha"])
    if method == "vera":
        return VeRA(weight, bias, tensors["vera_A"], tensors["vera_B"],
                    trainable(tensors["vera_lambda_d"]),
                    trainable(tensors["vera_lambda_b"]))
    if method == "lora":
        return LoRA(weight, bias, trainable(tensors["lora_A.weight"]),
                    trainable(tensors["lora_B.weight"]), spec["scaling"])
    raise ValueError(f"unknown method {method!r}")


def random_tensors(method, spec, generator, device):
    """Random inputs of the right shapes, nonzero so no work is skipped."""

    def normal(*shape, std=1.0):
        return (torch.randn(*shape, generator=generator) * std).to(device)

    d_out, d_in, tokens = spec["d_out"], spec["d_in"], spec["tokens"]
    tensors = {
        "x": normal(tokens, d_in),
        "dy": normal(tokens, d_out),
        "weight": normal(d_out, d_in, std=d_in ** -0.5),
        "bias": normal(d_out, std=0.1),
    }
    if method == "tera":
        tensors["tera_core"] = normal(*spec["ranks"], std=d_in ** -0.5)
        for n, (mode, rank) in enumerate(zip(spec["modes"], spec["ranks"]), 1):
            tensors[f"tera_factor_{n}"] = normal(mode, rank, std=rank ** -0.5)
            tensors[f"tera_lambda_{n}"] = 1 + normal(rank, std=0.1)
    elif method in ("vera", "lora"):
        rank = spec["rank"]
        a = normal(rank, d_in, std=d_in ** -0.5)
        b = normal(d_out, rank, std=rank ** -0.5)
        if method == "vera":
            tensors.update(vera_A=a, vera_B=b,
                           vera_lambda_d=normal(rank, std=0.1),
                           vera_lambda_b=normal(d_out, std=0.1))
        else:
            tensors.update({"lora_A.weight": a, "lora_B.weight": b})
    return tensors


class TransformerStack:
    """A decoder-only language model written as transformers' GPT-2 or LLaMA
    (pre-norm blocks, causal attention, GELU-tanh MLP or SwiGLU with rotary
    positions and grouped-query heads), frozen, with the spec's adapter on the
    targeted projections. The position (GPT-2) or token (LLaMA) embedding
    trains in every variant, so that each step back-propagates through every
    block, as a model with an adapter in its first block does; the frozen
    variant is that step with no adapter."""

    def __init__(self, spec, generator, device):
        self.spec = spec
        self.device = device
        d, vocab, tokens = spec["hidden"], spec["vocab"], spec["tokens"]
        self.generator = generator
        self.shared = {}
        self.params = []

        self.embed = self.normal(vocab, d, std=0.02)
        self.positions = self.normal(tokens, d, std=0.02)
        (self.positions if spec["family"] == "gpt2" else self.embed).requires_grad_()
        self.params.append(self.positions if spec["family"] == "gpt2"
                           else self.embed)
        self.blocks = [self.block() for _ in range(spec["layers"])]
        self.final_norm = torch.ones(d, device=device)
        self.final_bias = torch.zeros(d, device=device)
        self.head = self.normal(vocab, d, std=0.02)
        self.ids = torch.arange(tokens, device=device).mul(7919) % vocab

    def normal(self, *shape, std):
        return (torch.randn(*shape, generator=self.generator) * std).to(
            self.device)

    def linear(self, name, d_out, d_in, bias):
        weight = self.normal(d_out, d_in, std=d_in ** -0.5)
        b = torch.zeros(d_out, device=self.device) if bias else None
        spec = self.spec
        if spec["method"] == "frozen" or name not in spec["targets"]:
            return Frozen(weight, b)
        method, key = spec["method"], f"{d_out}x{d_in}"
        if method == "tera":
            shape = spec["tera_shapes"][key]
            if key not in self.shared:
                self.shared[key] = (
                    self.normal(*shape["ranks"], std=d_in ** -0.5),
                    [self.normal(m, r, std=r ** -0.5)
                     for m, r in zip(shape["modes"], shape["ranks"])])
            core, factors = self.shared[key]
            scales = {f"tera_lambda_{n}": trainable(1 + self.normal(r, std=0.1))
                      for n, r in enumerate(shape["ranks"], 1)}
            layer = TeRA(weight, b, core, factors, scales, 1.0)
        elif method == "vera":
            rank = spec["rank"]
            if key not in self.shared:
                self.shared[key] = (self.normal(rank, d_in, std=d_in ** -0.5),
                                    self.normal(d_out, rank, std=rank ** -0.5))
            a, bb = self.shared[key]
            layer = VeRA(weight, b, a, bb, trainable(self.normal(rank, std=0.1)),
                         trainable(self.normal(d_out, std=0.1)))
        else:
            rank = spec["rank"]
            layer = LoRA(weight, b, trainable(self.normal(rank, d_in, std=d_in ** -0.5)),
                         trainable(self.normal(d_out, rank, std=rank ** -0.5)),
                         spec["scaling"])
        self.params.extend(layer.trainable.values())
        return layer

    def block(self):
        d, inner = self.spec["hidden"], self.spec["intermediate"]
        if self.spec["family"] == "gpt2":
            return {
                "c_attn": self.linear("c_attn", 3 * d, d, True),
                "attn.c_proj": self.linear("attn.c_proj", d, d, True),
                "c_fc": self.linear("c_fc", inner, d, True),
                "mlp.c_proj": self.linear("mlp.c_proj", d, inner, True),
            }
        head_dim = d // self.spec["heads"]
        kv = self.spec["kv_heads"] * head_dim
        return {
            "q_proj": self.linear("q_proj", d, d, False),
            "k_proj": self.linear("k_proj", kv, d, False),
            "v_proj": self.linear("v_proj", kv, d, False),
            "o_proj": self.linear("o_proj", d, d, False),
            "gate_proj": self.linear("gate_proj", inner, d, False),
            "up_proj": self.linear("up_proj", inner, d, False),
            "down_proj": self.linear("down_proj", d, inner, False),
        }

    def attention(self, q, k, v):
        """Causal attention of [heads, T, D] queries over [kv_heads, T, D]."""
        groups = q.shape[0] // k.shape[0]
        k = k.repeat_interleave(groups, dim=0)
        v = v.repeat_interleave(groups, dim=0)
        scores = q @ k.transpose(1, 2) / q.shape[-1] ** 0.5
        t = q.shape[1]
        mask = torch.ones(t, t, dtype=torch.bool, device=q.device).triu(1)
        return torch.softmax(scores.masked_fill(mask, float("-inf")), -1) @ v

    def rope(self, x):
        t, dim = x.shape[1], x.shape[2]
        inv = 1.0 / (10000 ** (torch.arange(0, dim, 2, device=x.device) / dim))
        angles = torch.outer(torch.arange(t, device=x.device), inv)
        cos = torch.cat([angles.cos(), angles.cos()], -1)
        sin = torch.cat([angles.sin(), angles.sin()], -1)
        half = dim // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], -1)
        return x * cos + rotated * sin

    def heads(self, x, count):
        return x.reshape(x.shape[0], count, -1).transpose(0, 1)

    def forward_block(self, b, h):
        spec = self.spec
        d, heads = spec["hidden"], spec["heads"]
        if spec["family"] == "gpt2":
            x = F.layer_norm(h, (d,))
            q, k, v = b["c_attn"].forward(x).split(d, -1)
            a = self.attention(self.heads(q, heads), self.heads(k, heads),
                               self.heads(v, heads))
            h = h + b["attn.c_proj"].forward(a.transpose(0, 1).reshape(-1, d))
            x = F.layer_norm(h, (d,))
            m = F.gelu(b["c_fc"].forward(x), approximate="tanh")
            return h + b["mlp.c_proj"].forward(m)
        x = rms_norm(h)
        kv_heads = spec["kv_heads"]
        q = self.rope(self.heads(b["q_proj"].forward(x), heads))
        k = self.rope(self.heads(b["k_proj"].forward(x), kv_heads))
        v = self.heads(b["v_proj"].forward(x), kv_heads)
        a = self.attention(q, k, v)
        h = h + b["o_proj"].forward(a.transpose(0, 1).reshape(-1, d))
        x = rms_norm(h)
        m = F.silu(b["gate_proj"].forward(x)) * b["up_proj"].forward(x)
        return h + b["down_proj"].forward(m)

    def step(self):
        for p in self.params:
            p.grad = None
        h = self.embed[self.ids]
        if self.spec["family"] == "gpt2":
            h = h + self.positions
        for b in self.blocks:
            h = self.forward_block(b, h)
        h = (F.layer_norm(h, (h.shape[-1],)) if self.spec["family"] == "gpt2"
             else rms_norm(h))
        logits = F.linear(h, self.head)
        F.cross_entropy(logits[:-1], self.ids[1:]).backward()


def rms_norm(x, eps=1e-6):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def read_safetensors(path):
    """(tensors, metadata) of a safetensors file of float32 tensors."""
    with open(path, "rb") as f:
        data = f.read()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    metadata = header.pop("__metadata__", {})
    tensors = {}
    for name, entry in header.items():
        if entry["dtype"] != "F32":
            raise ValueError(f"{path}: {name} is {entry['dtype']}, not F32")
        begin, end = (8 + length + offset for offset in entry["data_offsets"])
        values = torch.frombuffer(bytearray(data[begin:end]),
                                  dtype=torch.float32)
        tensors[name] = values.reshape(entry["shape"])
    return tensors, metadata


def write_safetensors(path, tensors, metadata):
    """float32 tensors in name order, the header padded to 8 bytes."""
    header = {"__metadata__": metadata}
    chunks = []
    offset = 0
    for name in sorted(tensors):
        value = tensors[name].detach().to(torch.float32).contiguous()
        raw = value.numpy().astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(value.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(chunks))


def training_step(case, tensors):
    """One step on a golden file's inputs: the loss (mean cross-entropy
    against the case's labels), y, dx, every trainable tensor's gradient, and
    the trainable tensors after one AdamW step."""
    named = {name.split(".", 1)[1]: value for name, value in tensors.items()}
    layer = make_layer(case["method"], named, case.get("torch", {}))
    x = named["x"].clone().requires_grad_()
    y = layer.forward(x)
    loss = F.cross_entropy(y, torch.tensor(case["labels"]))
    loss.backward()
    out = {"output.loss": loss.detach().reshape(1), "output.y": y.detach(),
           "output.dx": x.grad}
    for name, p in layer.trainable.items():
        out[f"grad.{name}"] = p.grad.clone()
    if layer.trainable:
        settings = case["optimizer"]
        torch.optim.AdamW(list(layer.trainable.values()),
                          lr=settings["lr"], betas=tuple(settings["betas"]),
                          eps=settings["eps"],
                          weight_decay=settings["weightDecay"]).step()
        for name, p in layer.trainable.items():
            out[f"step.{name}"] = p.detach().clone()
    return out


def blas_libraries():
    """The BLAS libraries this process has loaded (torch.mm loads them)."""
    torch.mm(torch.ones(2, 2), torch.ones(2, 2))
    with open("/proc/self/maps") as maps:
        libraries = {line.split()[-1] for line in maps if ".so" in line}
    return sorted(os.path.realpath(path) for path in libraries
                  if "blas" in os.path.basename(path).lower())


def synchronize(device):
    """Waits for queued GPU work, so that a timing covers it."""
    if device == "cuda":
        torch.cuda.synchronize()


class Worker:
    OPS = ("info", "threads", "setup", "time", "drop", "golden")

    def __init__(self):
        self.cases = {}

    def info(self, request):
        cuda = torch.cuda.is_available()
        return {
            "torch": torch.__version__,
            "python": sys.version.split()[0],
            "executable": sys.executable,
            "blas": ", ".join(blas_libraries()) or "unknown",
            "mkldnn": torch.backends.mkldnn.is_available(),
            "cuda": torch.cuda.get_device_name() if cuda else None,
        }

    def threads(self, request):
        torch.set_num_threads(request["n"])
        # A build that calls the system OpenBLAS (Debian's) leaves its threads
        # to OpenBLAS: torch.set_num_threads does not reach them.
        blas_threads = None
        for path in blas_libraries():
            library = ctypes.CDLL(path)
            if hasattr(library, "openblas_set_num_threads"):
                library.openblas_set_num_threads(request["n"])
                blas_threads = library.openblas_get_num_threads()
        return {"threads": torch.get_num_threads(),
                "blas_threads": blas_threads}

    def setup(self, request):
        spec = request["case"]
        device = spec.get("device", "cpu")
        generator = torch.Generator().manual_seed(spec.get("seed", 0))
        if spec["kind"] == "kernel":
            modes, ranks = spec["modes"], spec["ranks"]
            m, n, k = spec["gemm"]

            def normal(*shape):
                return torch.randn(*shape, generator=generator).to(device)

            case = {
                "core": normal(*ranks),
                "factors": [normal(i, r) for i, r in zip(modes, ranks)],
                "scales": [normal(r) for r in ranks],
                "a": normal(m, k),
                "b": normal(k, n),
            }
            case["size"] = (spec["d_out"], spec["d_in"])
        elif spec["kind"] == "transformer":
            case = {"model": TransformerStack(spec, generator, device)}
        else:
            method = spec["method"]
            tensors = random_tensors(method, spec, generator, device)
            case = {
                "layer": make_layer(method, tensors, spec),
                "x": tensors["x"],
                "dy": tensors["dy"],
            }
        case["device"] = device
        self.cases[request["key"]] = case
        return {}

    def run(self, case, what):
        if what == "reconstruct":
            with torch.no_grad():
                tera_update(case["core"], case["factors"], case["scales"],
                            1.0, *case["size"])
        elif what == "sgemm":
            torch.mm(case["a"], case["b"])
        elif what == "step":
            step(case["layer"], case["x"], case["dy"])
        elif what == "lm step":
            case["model"].step()
        else:
            raise ValueError(f"unknown timing {what!r}")

    def time(self, request):
        case = self.cases[request["key"]]
        synchronize(case["device"])
        start = time.perf_counter()
        self.run(case, request["what"])
        synchronize(case["device"])
        return {"ms": (time.perf_counter() - start) * 1e3}

    def drop(self, request):
        self.cases.pop(request["key"], None)
        return {}

    def golden(self, request):
        """Reads our inputs, runs the step, writes inputs and results."""
        tensors, metadata = read_safetensors(request["input"])
        outputs = training_step(json.loads(metadata["case"]), tensors)
        metadata["made_by"] = (f"torch {torch.__version__}, python "
                               f"{sys.version.split()[0]}, torch_reference.py")
        write_safetensors(request["output"], {**tensors, **outputs}, metadata)
        return {"written": request["output"]}


def serve():
    worker = Worker()
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "quit":
            break
        try:
            if request["op"] not in Worker.OPS:
                raise ValueError(f"unknown request {request['op']!r}")
            reply = {"ok": getattr(worker, request["op"])(request)}
        except Exception as error:  # the Node side reports it and stops
            reply = {"error": f"{type(error).__name__}: {error}"}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    serve()
