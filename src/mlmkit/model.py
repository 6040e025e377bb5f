"""Load a masked LM and its tokenizer; the sparse prediction head shared by training,
evaluation and inference (vocabulary projection only at the positions that need it)."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch

from .config import MlmkitError

log = logging.getLogger("mlmkit")

# Models whose position ids start after the padding index, so that max_position_embeddings
# counts positions a sequence cannot use.
_OFFSET_POSITIONS = {"roberta", "xlm-roberta", "camembert", "data2vec-text", "longformer",
                     "roberta-prelayernorm", "xmod", "mpnet", "ibert"}


def _hub_error(name: str, e: Exception) -> MlmkitError:
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    if os.path.exists(name):
        return MlmkitError(f"model {name}: cannot load: {msg}")
    hint = (" If the Hub is unreachable, pass a local model directory, or set HF_HUB_OFFLINE=1 "
            "to use models already in the local cache.")
    return MlmkitError(f"model {name!r}: cannot load from the Hugging Face Hub: {msg}.{hint}")


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """transformers' own load report and weight-loading bar off for one load: mlmkit says
    what matters itself (a missing head, below), and the Python API stays quiet."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def load_tokenizer(name: str) -> Any:
    from transformers import AutoTokenizer

    try:
        with quiet_loading():
            tok = AutoTokenizer.from_pretrained(name)
    except Exception as e:
        raise _hub_error(name, e) from None
    if not getattr(tok, "is_fast", False):
        raise MlmkitError(f"model {name}: mlmkit needs a fast (Rust) tokenizer and none loads")
    if tok.mask_token is None:
        raise MlmkitError(f"model {name}: its tokenizer has no mask token; expected a masked LM")
    if tok.pad_token is None:
        # Not eos unconditionally (the guide's choice): BERT-style tokenizers have no eos.
        fallback = tok.eos_token or tok.sep_token or tok.unk_token
        if fallback is None:
            raise MlmkitError(f"model {name}: its tokenizer has no pad, eos, sep or unk token")
        tok.pad_token = fallback
    return tok


def load_model_config(name: str) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name)
    except Exception as e:
        raise _hub_error(name, e) from None


def max_block_size(config: Any, tokenizer: Any) -> int:
    limit = getattr(config, "max_position_embeddings", None) or 10**9
    if config.model_type in _OFFSET_POSITIONS:
        limit -= (config.pad_token_id or 0) + 1
    if 0 < getattr(tokenizer, "model_max_length", 10**30) < 10**9:
        limit = min(limit, tokenizer.model_max_length)
    return limit


def load_model(name: str, config: Any = None, from_scratch: bool = False,
               vocab_size: int | None = None) -> Any:
    """A masked LM in float32; with `from_scratch`, random weights of the named model's
    shape."""
    from transformers import AutoModelForMaskedLM

    config = config if config is not None else load_model_config(name)
    try:
        if from_scratch:
            if vocab_size is not None:
                config.vocab_size = vocab_size
            model = AutoModelForMaskedLM.from_config(config, dtype=torch.float32)
        else:
            with warnings.catch_warnings(), quiet_loading():
                warnings.simplefilter("ignore")
                # float32 whatever the checkpoint's dtype: transformers 5 loads a bf16
                # checkpoint as bf16, and AdamW steps on bf16 weights round away to nothing.
                # Mixed precision comes from autocast; FillMask casts for inference.
                model, info = AutoModelForMaskedLM.from_pretrained(
                    name, config=config, output_loading_info=True, dtype=torch.float32)
            missing = info.get("missing_keys") or []
            if missing:
                log.warning("%s has no trained masked-LM head (%d weights initialised fresh: "
                            "%s); its base perplexity is meaningless until it is trained",
                            name, len(missing), ", ".join(sorted(missing)[:4]))
    except ValueError as e:
        if "Unrecognized configuration class" in str(e):
            raise MlmkitError(f"model {name}: transformers has no masked-LM class for model type "
                              f"{config.model_type!r}") from None
        raise _hub_error(name, e) from None
    except OSError as e:
        raise _hub_error(name, e) from None
    if vocab_size is not None and model.get_input_embeddings().num_embeddings < vocab_size:
        model.resize_token_embeddings(vocab_size)
    return model


def sparse_head(model: Any) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The position-wise prediction head (hidden states -> vocabulary logits) of known masked-LM
    classes, so it can run on masked positions only; None where we do not know the layout."""
    if hasattr(model, "lm_head"):  # RoBERTa, XLM-R, CamemBERT, MPNet, Longformer, ...
        return model.lm_head
    if hasattr(model, "cls") and hasattr(model.cls, "predictions"):  # BERT family
        return model.cls
    if hasattr(model, "vocab_projector"):  # DistilBERT
        return lambda h: model.vocab_projector(
            model.vocab_layer_norm(model.activation(model.vocab_transform(h))))
    if hasattr(model, "head") and hasattr(model, "decoder"):  # ModernBERT
        return lambda h: model.decoder(model.head(h))
    if hasattr(model, "generator_lm_head"):  # ELECTRA generator
        return lambda h: model.generator_lm_head(model.generator_predictions(h))
    if hasattr(model, "predictions") and model.config.model_type == "albert":
        return model.predictions
    return None


def masked_logits(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                  positions: torch.Tensor, sparse: bool = True) -> torch.Tensor:
    """Vocabulary logits at `positions`, shape [n_positions, V]. `positions` is a boolean
    [B, L] tensor, or int64 indices into the flattened [B * L] positions (no data-dependent
    shape: nothing waits for the device, and a compiled graph stays whole).

    The sparse path runs the encoder, gathers the hidden states at `positions` and applies the
    head to those alone; the logits equal the dense model's at the same positions.
    """
    def pick(x: torch.Tensor) -> torch.Tensor:
        if positions.dtype == torch.bool:
            return x[positions]
        return x.flatten(0, 1).index_select(0, positions)

    head = sparse_head(model) if sparse else None
    if head is None:
        return pick(model(input_ids=input_ids, attention_mask=attention_mask).logits)
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask)[0]
    return head(pick(hidden))


def masked_lm_loss(model: Any, batch: dict[str, torch.Tensor], sparse: bool = True
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of token losses, number of predicted tokens) for a batch with -100 labels.

    Uses the batch's `masked_index`/`masked_labels` (see `masking.sparse_targets`) when it has
    them, else the positions of `labels` that are not -100.
    """
    if "masked_index" in batch:
        positions, targets = batch["masked_index"], batch["masked_labels"]
    else:
        positions = batch["labels"] != -100
        targets = batch["labels"][positions]
    logits = masked_logits(model, batch["input_ids"], batch.get("attention_mask"), positions,
                           sparse)
    loss = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum",
                                             ignore_index=-100)
    return loss, (targets != -100).sum()


def pick_device(device: str) -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)
