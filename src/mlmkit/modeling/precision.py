"""The precision an inference model runs in: float32 (exact), bfloat16, float16, or int8.

int8 quantizes every linear layer (the encoder's and the vocabulary projection) to int8 weights
with one scale per output channel, and quantizes each row of its input (each token) with its
own scale at run time ("W8A8, per-token dynamic"); the products run as int8 x int8 -> int32
through `torch._int_mm` (oneDNN: VNNI or AMX where the CPU has them) and are rescaled to
float32. Embeddings, layer norms, attention and the softmax stay float32.

Why our own ~40 lines rather than a library's, measured on a 2-core AMD EPYC with scratch
scripts (docs/benchmarks.md, "CPU inference at the hardware's limit", what was tried):
- `torch.ao.quantization.quantize_dynamic` (deprecated in favour of torchao) quantizes a
  whole batch's activations with one scale: top-1 agreement with float32 on the real
  bert-tiny-splade fell to 84.4%, against 95.4% for per-token scales;
- torchao's `Int8DynamicActivationInt8WeightConfig` does per-token scales too, but in eager
  mode on a CPU it ran 158 sentences/s and 56.9 ms for one sentence against these 347 and
  7.2 ms (it is built for torch.compile, which took 17 s to compile the encoder here and then
  was no faster for a batch and slower for one sentence).
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import torch
from torch import nn

from mlmkit.errors import MlmkitError
from mlmkit.settings import named

# The precisions an inference engine takes; int8 holds float32 outside its linear layers.
PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
              "int8": torch.float32}
ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A linear layer's weight [out, in] as int8 and one float32 scale per output channel
    (its largest magnitude maps to 127): mlmkit's int8 rule for weights, whichever runtime
    multiplies them."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1).clamp_min(1e-12) / 127
    return (w / scale[:, None]).round().clamp(-127, 127).to(torch.int8), scale


class Int8Linear(nn.Module):
    """An `nn.Linear` for inference with int8 weights (a scale per output channel) and int8
    activations (a scale per row, computed at each call); the output is float32 (or the
    input's float dtype)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        q, scale = quantize_weight(linear.weight)
        # [out, in], used through its transposed view: as fast as a contiguous [in, out] copy
        # for the encoder's shapes, within 12% for the vocabulary projection of 22-704 rows,
        # and 3x faster for one row (the one-sentence case)
        self.register_buffer("qweight", q.contiguous())
        self.register_buffer("weight_scale", scale)
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Few, whole-tensor ops: at one sentence each op's fixed cost is what counts.
        shape = x.shape
        rows = x.reshape(-1, shape[-1]).float()
        # abs().amax(): 3.7 us for 25 x 768, where linalg.vector_norm(inf) takes 52
        scale = rows.abs().amax(dim=1, keepdim=True).clamp_min_(1e-12).mul_(1 / 127)
        q = torch.div(rows, scale).round_().to(torch.int8)  # within [-127, 127] by the scale
        # three passes over the output (to float, x row scale, x column scale + bias): 0.29 ms
        # for 800 x 3072, where one mixed int32 x float multiply by the outer product took 0.47
        y = torch._int_mm(q, self.qweight.t()).float().mul_(scale)
        y = (torch.addcmul(self.bias, y, self.weight_scale) if self.bias is not None
             else y.mul_(self.weight_scale))
        return y.view(*shape[:-1], self.out_features).to(x.dtype)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight, [out, in] as `nn.Linear` has it (for code that reads it)."""
        return self.qweight.float() * self.weight_scale[:, None]

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, int8 per-channel weights, per-token activations")


class PackedLinear(nn.Module):
    """An `nn.Linear` for CPU inference (float32 or bfloat16) whose weight is also held
    prepacked in oneDNN's blocked layout and multiplied by oneDNN (what torch.compile's
    freezing does on a CPU, without compiling): the same numbers up to summation order
    (float32: 6e-7 relative to the output, against MKL's 3e-7, from a float64 reference).

    Measured on a 2-core AMD EPYC with AVX-512 (torch 2.13), ms per call of `F.linear` ->
    packed: 25 tokens x 768 -> 3072, float32 0.85 -> 0.25, bfloat16 0.30 -> 0.14; 800 tokens
    17.1 -> 7.3 and 4.6 -> 3.7; the 50,265-token vocabulary projection of 1 / 3 / 32 masks
    7.9 / 28.1 / 25.3 -> 1.7 / 2.2 / 6.9 (float32). torch's float32 `matmul` goes through MKL,
    which on this AMD CPU reached 221-231 GFLOP/s against oneDNN's 514-536 in
    bench/cpu_precision.py. The float weight is kept
    (code may read it; a tied projection shares it with the embeddings), so the packed copy
    costs the linear layers' size once more in memory."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.weight = linear.weight
        self.bias = linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # an opaque oneDNN tensor: an attribute, not a buffer (no state_dict, never saved)
        self._packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self._packed, self.bias, "none", [], "")

    def linear(self) -> nn.Linear:
        """The plain `nn.Linear` on the same weight and bias."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device="meta")
        lin.weight, lin.bias = self.weight, self.bias
        return lin

    def __deepcopy__(self, memo: dict) -> PackedLinear:
        # the oneDNN tensor has no storage to copy: pack the copied weight again
        lin = self.linear()
        lin.weight = copy.deepcopy(self.weight, memo)
        lin.bias = copy.deepcopy(self.bias, memo)
        return PackedLinear(lin)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, oneDNN-packed")


def pack_linears(model: nn.Module) -> int:
    """Replace each float32 / bfloat16 `nn.Linear` of a CPU model in place by a `PackedLinear`;
    the number replaced (0 where this torch has no oneDNN, or its packed product disagrees
    with `F.linear` on a probe)."""
    if not _packing_works():
        return 0
    return replace_layers(model, nn.Linear, PackedLinear)


@functools.lru_cache(maxsize=1)
def _packing_works() -> bool:
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        lin = nn.Linear(16, 8)
        x = torch.randn(3, 16)
        with torch.inference_mode():
            return bool(torch.allclose(PackedLinear(lin)(x), lin(x), rtol=1e-4, atol=1e-5))
    except (RuntimeError, AttributeError):
        return False


def replace_layers(model: nn.Module, kind: type, make: Any) -> int:
    """Replace each layer of exactly type `kind` in `model` by `make(layer)`; a layer shared by
    two parents (a tied head) is converted once. The number replaced."""
    done: dict[int, nn.Module] = {}
    places = [(parent, name, child) for parent in model.modules()
              for name, child in parent.named_children() if type(child) is kind]
    for parent, name, child in places:
        if id(child) not in done:
            done[id(child)] = make(child)
        setattr(parent, name, done[id(child)])
    return len(done)


def quantize_int8(model: nn.Module) -> int:
    """Replace each `nn.Linear` of `model` in place by an `Int8Linear`; the number replaced.
    A layer shared by two parents (a tied head) is converted once."""
    return replace_layers(model, nn.Linear, Int8Linear)


def check_precision(precision: str, device: torch.device) -> str:
    """`precision` ('auto': bfloat16 on a GPU, else float32) checked against the device, in
    one line naming the setting."""
    if precision == "auto":
        return "bfloat16" if device.type == "cuda" else "float32"
    precision = ALIASES.get(precision, precision)
    if precision not in PRECISIONS:
        raise MlmkitError(f"{named('dtype', precision, quoted=True)}: expected auto, "
                          f"{', '.join(PRECISIONS)}")
    if precision == "int8" and device.type != "cpu":
        raise MlmkitError(f"{named('dtype', 'int8')}: int8 runs on a CPU only; on "
                          f"{device.type} use bfloat16 (or float16)")
    return precision


def apply_precision(model: Any, device: torch.device, precision: str, owned: bool = True
                    ) -> Any:
    """`model` on `device` in `precision` (checked, not 'auto'), in eval mode; a model already
    quantized stays as it is. int8 quantizes a copy of a model the caller gave (not `owned`),
    so the caller's model (one being trained, say) is left as it was."""
    packed = next((m for m in model.modules() if isinstance(m, PackedLinear)), None)
    if packed is not None and (precision == "int8" or device.type != "cpu"
                               or PRECISIONS[precision] != packed.weight.dtype):
        # a model an engine packed, wanted elsewhere or in another precision: plain again
        replace_layers(model, PackedLinear, PackedLinear.linear)
    if precision == "int8" and not any(isinstance(m, Int8Linear) for m in model.modules()):
        model = model if owned else copy.deepcopy(model)
        model = model.to(device=device, dtype=torch.float32).eval()
        quantize_int8(model)
        return model
    model = model.to(device=device, dtype=PRECISIONS[precision]).eval()
    if owned and precision in ("float32", "bfloat16") and device.type == "cpu":
        pack_linears(model)
    return model


def precision_of(model: Any) -> str:
    """The precision a loaded model runs in, as `apply_precision` named it."""
    if isinstance(getattr(model, "precision", None), str):  # a compiled model says it
        return model.precision
    if any(isinstance(m, Int8Linear) for m in model.modules()):
        return "int8"
    dtype = next((p.dtype for p in model.parameters()), torch.float32)
    return next((n for n, t in PRECISIONS.items() if t == dtype and n != "int8"), "float32")
