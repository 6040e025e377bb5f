"""The OpenVINO runtime for CPU inference (`runtime="openvino"`, the optional extra
`mlmkit[openvino]`): the same graph the torch engines run (`load.masked_logits`: the encoder,
then the head at the masked positions only) traced once and compiled by OpenVINO.

Why a second runtime beside torch, measured with bench/cpu_precision.py on a 2-core AMD EPYC
(Zen 4, AVX-512 BF16/VNNI, no AMX), DistilRoBERTa shape, one ELI5 sentence at a time, two runs
(docs/benchmarks.md, "The OpenVINO runtime"): p50 float32 27.8 / 35.1 -> 22.1 / 25.1 ms,
bfloat16 19.2 / 21.2 -> 15.1 / 18.5 ms, int8 16.7 / 24.8 -> 12.5 / 12.0 ms, once OpenVINO
has fused the graph and dropped torch's per-operation dispatch. For batches it is no faster
than torch's packed kernels, so torch stays the default.

int8 uses mlmkit's rule for the weights (`precision.quantize_weight`: int8, one scale per
output channel) and OpenVINO's dynamic activation quantization (a scale per group of 32
inputs: top-1 95.8% against float32 on bert-tiny-splade, where groups of 128 gave 95.1% for
5% less time), so the weights are the ones `Int8Linear` would use.
"""

from __future__ import annotations

import copy
import threading
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from mlmkit.errors import MlmkitError
from mlmkit.modeling.precision import (
    Int8Linear,
    PackedLinear,
    quantize_weight,
    replace_layers,
)
from mlmkit.quiet import libraries_quiet
from mlmkit.settings import named

RUNTIMES = ("torch", "openvino")
# the precisions OpenVINO runs here, as its INFERENCE_PRECISION_HINT; int8 is float32
# arithmetic between int8-weight products
_HINTS = {"float32": "f32", "bfloat16": "bf16", "int8": "f32"}
_INSTALL = "pip install 'mlmkit[openvino]'"


def check_runtime(runtime: str, device: torch.device, precision: str) -> str:
    """`runtime` checked against the device and precision, in one line naming the setting,
    before any model loads."""
    if runtime not in RUNTIMES:
        raise MlmkitError(f"{named('runtime', runtime, quoted=True)}: expected "
                          f"{' or '.join(RUNTIMES)}")
    if runtime == "torch":
        return runtime
    if device.type != "cpu":
        raise MlmkitError(f"{named('runtime', runtime)}: OpenVINO runs the model on a CPU; on "
                          f"{device.type} use the torch runtime")
    if precision not in _HINTS:
        raise MlmkitError(f"{named('runtime', runtime)} with {named('dtype', precision)}: "
                          f"expected dtype {', '.join(_HINTS)}")
    try:
        import openvino  # noqa: F401
    except ImportError:
        raise MlmkitError(f"{named('runtime', runtime)}: OpenVINO is not installed; "
                          f"{_INSTALL}") from None
    return runtime


class _Int8Weights(nn.Module):
    """An `nn.Linear` whose weight is int8 x a float32 scale per output channel, written so
    that OpenVINO's converter sees int8 constants and a dequantizing multiply: the pattern it
    compiles into products on int8 weights."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        q, scale = quantize_weight(linear.weight)
        self.register_buffer("qweight", q)
        self.register_buffer("scale", scale[:, None].contiguous())
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.qweight.to(x.dtype) * self.scale, self.bias)


class _Graph(nn.Module):
    """What is traced: (input ids, attention mask, flat mask positions) -> logits there."""

    def __init__(self, model: nn.Module, graph: Any) -> None:
        super().__init__()
        self.model, self.graph = model, graph

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                positions: torch.Tensor) -> torch.Tensor:
        return self.graph(self.model, input_ids, attention_mask, positions)


class OpenVinoMaskedLM:
    """A masked LM compiled by OpenVINO for the CPU: `masked_logits(ids, mask, positions)`
    gives what `load.masked_logits` gives for the torch model. Thread-safe: each thread gets
    its own infer request (the server runs batches from worker threads)."""

    runtime = "openvino"

    def __init__(self, model: nn.Module, precision: str, graph: Any) -> None:
        import openvino as ov

        if any(isinstance(m, Int8Linear) for m in model.modules()):
            raise MlmkitError("runtime openvino: the model is already quantized by mlmkit's "
                              "torch int8; pass the float model")
        self.config = model.config
        self.precision = precision
        # a copy: the caller's model stays as it was (unpacked, unquantized, trainable)
        model = copy.deepcopy(model).to(device="cpu", dtype=torch.float32).eval()
        replace_layers(model, PackedLinear, PackedLinear.linear)
        if precision == "int8":
            replace_layers(model, nn.Linear, _Int8Weights)
        ids = torch.full((2, 8), 5, dtype=torch.long)
        mask = torch.ones_like(ids)
        mask[1, 6:] = 0  # a padded row, so the traced graph keeps the mask's path
        positions = torch.tensor([1, 9])
        with warnings.catch_warnings(), libraries_quiet("transformers"), torch.no_grad():
            warnings.simplefilter("ignore")  # the tracer's own warnings, meant for its users
            ov_model = ov.convert_model(
                _Graph(model, graph), example_input=(ids, mask, positions), share_weights=False,
                input=[ov.PartialShape([-1, -1]), ov.PartialShape([-1, -1]),
                       ov.PartialShape([-1])])
        del model
        config = {"INFERENCE_PRECISION_HINT": _HINTS[precision], "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_NUM_THREADS": torch.get_num_threads()}
        if precision == "int8":
            config["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = 32
        self._compiled = ov.Core().compile_model(ov_model, "CPU", config)
        ran = self._compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        if precision == "bfloat16" and ran != "bf16":
            raise MlmkitError("runtime openvino with dtype bfloat16: this CPU has no bfloat16 "
                              "instructions OpenVINO uses; expected dtype float32 or int8")
        self._local = threading.local()

    def masked_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                      positions: torch.Tensor) -> torch.Tensor:
        """float32 logits [n_positions, V] at `positions` (int64 flat indices, or a boolean
        [B, L] tensor)."""
        if positions.dtype == torch.bool:
            positions = positions.flatten().nonzero().squeeze(1)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        request.infer({0: input_ids.long().numpy(), 1: attention_mask.long().numpy(),
                       2: positions.numpy()})
        # a copy: the request's output buffer is reused by its next call
        return torch.from_numpy(np.array(request.get_output_tensor(0).data, copy=True))

    def __repr__(self) -> str:
        return f"OpenVinoMaskedLM({self.config.model_type}, {self.precision})"
