"""PyTorch reference for the tera-peft benchmarks.

The three adapters written from docs (tera-math.md) the way a PyTorch user
would: TeRA's update as a chain of tensordots merged into the frozen weight,
VeRA and LoRA as in Hugging Face PEFT (a low-rank branch next to the frozen
linear layer). Autograd computes every gradient.

The Node suite (scripts/bench/run.ts) drives this file as a worker: one JSON
request per line on stdin, one JSON reply per line on stdout, so that its runs
interleave with ours. Each timing reply carries the time measured here,
without the round trip.
"""

import ctypes
import json
import os
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
        self.trainable = []

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
        update = tera_update(self.core, self.factors, self.trainable,
                             self.alpha, d_out, d_in)
        return F.linear(x, self.weight + update, self.bias)


class VeRA(Frozen):
    def __init__(self, weight, bias, a, b, lambda_d, lambda_b):
        super().__init__(weight, bias)
        self.a = a
        self.b = b
        self.trainable = [lambda_d, lambda_b]

    def forward(self, x):
        lambda_d, lambda_b = self.trainable
        update = F.linear(lambda_d * F.linear(x, self.a), self.b)
        return super().forward(x) + lambda_b * update


class LoRA(Frozen):
    def __init__(self, weight, bias, a, b, scaling):
        super().__init__(weight, bias)
        self.trainable = [a, b]
        self.scaling = scaling

    def forward(self, x):
        a, b = self.trainable
        return super().forward(x) + F.linear(F.linear(x, a), b) * self.scaling


def step(layer, x, dy):
    """One step's forward and backward: y, dx and the adapter gradients."""
    for p in layer.trainable:
        p.grad = None
    x = x.detach().requires_grad_()
    y = layer.forward(x)
    y.backward(dy)
    return [y.detach(), x.grad] + [p.grad for p in layer.trainable]


def trainable(t):
    return t.detach().clone().requires_grad_()


def make_layer(method, tensors, spec):
    """A layer from named tensors: those of the Node side, or random ones."""
    weight, bias = tensors["weight"], tensors["bias"]
    if method == "frozen":
        return Frozen(weight, bias)
    if method == "tera":
        order = len(spec["modes"])
        factors = [tensors[f"factor{n}"] for n in range(order)]
        scales = [trainable(tensors[f"scale{n}"]) for n in range(order)]
        return TeRA(weight, bias, tensors["core"], factors, scales,
                    spec["alpha"])
    if method == "vera":
        return VeRA(weight, bias, tensors["a"], tensors["b"],
                    trainable(tensors["lambda_d"]),
                    trainable(tensors["lambda_b"]))
    if method == "lora":
        return LoRA(weight, bias, trainable(tensors["a"]),
                    trainable(tensors["b"]), spec["alpha"] / spec["rank"])
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
        tensors["core"] = normal(*spec["ranks"], std=d_in ** -0.5)
        for n, (mode, rank) in enumerate(zip(spec["modes"], spec["ranks"])):
            tensors[f"factor{n}"] = normal(mode, rank, std=rank ** -0.5)
            tensors[f"scale{n}"] = 1 + normal(rank, std=0.1)
    elif method in ("vera", "lora"):
        rank = spec["rank"]
        tensors["a"] = normal(rank, d_in, std=d_in ** -0.5)
        tensors["b"] = normal(d_out, rank, std=rank ** -0.5)
        tensors["lambda_d"] = normal(rank, std=0.1)
        tensors["lambda_b"] = normal(d_out, std=0.1)
    return tensors


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
    OPS = ("info", "threads", "setup", "time", "drop", "check")

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

    def check(self, request):
        """One step on the tensors the Node side wrote; writes back y, dx
        and the gradients next to them."""
        folder = request["dir"]
        with open(os.path.join(folder, "manifest.json")) as f:
            manifest = json.load(f)
        tensors = {}
        for name, shape in manifest["inputs"].items():
            with open(os.path.join(folder, name + ".f32"), "rb") as f:
                data = bytearray(f.read())
            values = torch.frombuffer(data, dtype=torch.float32)
            tensors[name] = values.reshape(shape)
        layer = make_layer(manifest["method"], tensors, manifest["spec"])
        outputs = step(layer, tensors["x"], tensors["dy"])
        for name, value in zip(manifest["outputs"], outputs):
            with open(os.path.join(folder, name + ".torch.f32"), "wb") as f:
                f.write(value.contiguous().numpy().tobytes())
        return {"written": manifest["outputs"]}


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
