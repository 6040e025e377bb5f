"""Hugging Face masked LMs <-> keras-hub `*MaskedLM` models, weight for weight, both ways.

One module per architecture family holds its table of weights (keras_bert, keras_roberta,
keras_distilbert); this one imports Keras, picks the family, applies a table in either
direction and fixes the two places where keras-hub's layers compute something else than the
Hugging Face model (activation, LayerNorm epsilon), so logits agree to float precision.
Tested with keras-hub 0.32.0 (`KERAS_HUB_TESTED`): the tables name its private layers.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlmkit.errors import MlmkitError
from mlmkit.settings import named

log = logging.getLogger("mlmkit")

KERAS_HUB_TESTED = "0.32.0"
# model_type -> the module holding that family's table.
FAMILIES = {"bert": "bert", "roberta": "roberta", "distilbert": "distilbert"}
INSTALL_HINT = ("pip install 'mlmkit[keras]' (with TensorFlow, as the guide); without "
                "TensorFlow, on the torch backend: pip install 'keras>=3.15,<3.16' regex && "
                f"pip install --no-deps keras-hub=={KERAS_HUB_TESTED}, then KERAS_BACKEND=torch")


def keras_refusal(why: str) -> MlmkitError:
    """The error of what the Keras backend cannot do, naming the setting that chose it."""
    return MlmkitError(f"{named('backend', 'keras')}: {why}")


def require_tied(config: Any) -> None:
    """keras-hub's masked-LM heads project with the input embeddings: every architecture
    converted needs a tied decoder."""
    if not getattr(config, "tie_word_embeddings", True):
        raise keras_refusal("tie_word_embeddings false; keras-hub's masked-LM "
                          "head projects with the input embeddings, so the decoder must be tied")


def import_keras() -> tuple[Any, Any]:
    """(keras, keras_hub), or an MlmkitError saying how to install them. Without
    KERAS_BACKEND and without TensorFlow, the torch backend: mlmkit always has torch, and Keras'
    own default, tensorflow, would fail to import."""
    if "KERAS_BACKEND" not in os.environ and importlib.util.find_spec("tensorflow") is None:
        os.environ["KERAS_BACKEND"] = "torch"
    try:
        keras = importlib.import_module("keras")
        keras_hub = importlib.import_module("keras_hub")
    except ImportError as e:
        raise keras_refusal(f"cannot import {e.name or 'keras'} ({e}); "
                          f"{INSTALL_HINT}") from None
    if keras_hub.__version__ != KERAS_HUB_TESTED:
        log.warning("keras-hub %s: mlmkit's weight mapping was tested with %s; check the "
                    "round trip (tests/unit/test_keras_convert.py) before trusting it",
                    keras_hub.__version__, KERAS_HUB_TESTED)
    return keras, keras_hub


def family_module(config: Any) -> Any:
    """The mapping module of a transformers config's architecture, or a one-line error naming
    the supported ones."""
    name = FAMILIES.get(getattr(config, "model_type", None))
    if name is None:
        raise keras_refusal(f"model type {config.model_type!r} is not supported; "
                          f"supported: {', '.join(FAMILIES)} (BERT, RoBERTa/DistilRoBERTa, "
                          "DistilBERT masked LMs)")
    return importlib.import_module(f".{name}", __package__)


@dataclass
class Tie:
    """One Hugging Face tensor and the Keras variable holding it. `transpose`: a Linear weight
    ([out, in] in torch, [in, out] or [in, heads, head_dim] in Keras); otherwise the values
    are the same, only reshaped ([hidden] <-> [heads, head_dim]). `to_keras` / `to_hf`
    replace the rule for a tensor stored otherwise (RoBERTa's offset positions)."""

    hf_key: str
    variable: Any
    transpose: bool = False
    to_keras: Callable[[dict[str, np.ndarray]], np.ndarray] | None = None
    to_hf: Callable[[np.ndarray, dict[str, np.ndarray]], np.ndarray] | None = None


def gelu_exact(x: Any) -> Any:
    import keras

    return keras.activations.gelu(x, approximate=False)


def gelu_tanh(x: Any) -> Any:
    import keras

    return keras.activations.gelu(x, approximate=True)


# transformers' activation names -> the Keras function computing the same.
ACTIVATIONS = {"gelu": gelu_exact, "gelu_new": gelu_tanh, "gelu_pytorch_tanh": gelu_tanh,
               "gelu_fast": gelu_tanh, "relu": "relu"}


def activation_of(name: str) -> Any:
    if name not in ACTIVATIONS:
        raise keras_refusal(f"activation {name!r} is not supported; supported: "
                          f"{', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def match_hf_layers(model: Any, hidden_act: str, head_act: str, eps: float) -> None:
    """Make the keras-hub model compute what the Hugging Face one does: keras-hub's BERT uses
    tanh-approximate GELU in its encoder where HF's "gelu" is exact (6e-5 off in the logits),
    and its head LayerNorm uses epsilon 1e-5 where BERT's is 1e-12."""
    import keras

    hidden, head = keras.activations.get(activation_of(hidden_act)), \
        keras.activations.get(activation_of(head_act))
    for layer in model.backbone.transformer_layers:
        layer.activation = hidden
        layer._feedforward_intermediate_dense.activation = hidden
    model.masked_lm_head.intermediate_activation = head
    model.masked_lm_head._intermediate_dense.activation = head
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.LayerNormalization):
            layer.epsilon = eps


def hf_state(hf_model: Any) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().float().numpy() for k, v in hf_model.state_dict().items()}


def to_keras(hf_model: Any) -> Any:
    """The keras-hub masked LM of `hf_model`'s family holding its weights (float32)."""
    import_keras()
    family = family_module(hf_model.config)
    family.check_config(hf_model.config)
    model = family.build(hf_model.config)
    state = hf_state(hf_model)
    for tie in family.ties(hf_model.config, model):
        shape = tuple(tie.variable.shape)
        if tie.to_keras is not None:
            value = tie.to_keras(state)
        else:
            value = state[tie.hf_key].T if tie.transpose else state[tie.hf_key]
        tie.variable.assign(np.reshape(value, shape).astype(np.float32))
    return model


def to_hf(keras_model: Any, hf_model: Any) -> Any:
    """Copy `keras_model`'s weights into `hf_model` (same family and shape) in place; tensors
    Keras has no variable for (BERT's token-type rows, RoBERTa's two reserved position rows)
    keep `hf_model`'s values. Returns `hf_model`."""
    import keras
    import torch

    family = family_module(hf_model.config)
    params = hf_model.state_dict()
    state = hf_state(hf_model)
    with torch.no_grad():
        for tie in family.ties(hf_model.config, keras_model):
            value = keras.ops.convert_to_numpy(tie.variable.value)
            target = params[tie.hf_key]
            if tie.to_hf is not None:
                value = tie.to_hf(value, state)
            elif tie.transpose:
                value = np.reshape(value, (target.shape[1], target.shape[0])).T
            target.copy_(torch.from_numpy(np.ascontiguousarray(
                np.reshape(value, tuple(target.shape)))))
    return hf_model


def keras_inputs(input_ids: np.ndarray, padding: np.ndarray, positions: np.ndarray,
                 segments: bool) -> dict[str, np.ndarray]:
    """The input dictionary of a keras-hub masked LM: ids, padding mask (1 = a real token),
    the positions to predict [B, M] and, for BERT, all-zero segment ids."""
    x = {"token_ids": input_ids.astype(np.int32), "padding_mask": padding.astype(np.int32),
         "mask_positions": positions.astype(np.int32)}
    if segments:
        x["segment_ids"] = np.zeros_like(x["token_ids"])
    return x


def uses_segments(keras_model: Any) -> bool:
    return "segment_ids" in keras_model.input
