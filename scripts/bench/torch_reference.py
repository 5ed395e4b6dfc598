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
