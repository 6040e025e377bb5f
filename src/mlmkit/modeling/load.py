"""Load a masked LM and its tokenizer; the sparse prediction head shared by training,
evaluation and inference (vocabulary projection only at the positions that need it)."""

from __future__ import annotations

import contextlib
import functools
import logging
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from mlmkit.errors import MlmkitError
from mlmkit.io.hub import OFFLINE, first_line, model_dir, reach, refusal
from mlmkit.modeling.openvino import OpenVinoMaskedLM, check_runtime
from mlmkit.modeling.precision import apply_precision, check_precision
from mlmkit.modeling.weights import check_weights, mismatch
from mlmkit.settings import named

log = logging.getLogger("mlmkit")

# Models whose position ids start after the padding index, so that max_position_embeddings
# counts positions a sequence cannot use.
_OFFSET_POSITIONS = {"roberta", "xlm-roberta", "camembert", "data2vec-text", "longformer",
                     "roberta-prelayernorm", "xmod", "mpnet", "ibert"}


# What a directory needs for a fast tokenizer to load: transformers 5 builds a tokenizer with
# only its special tokens from a directory holding none of these, and the rest goes wrong later.
_TOKENIZER_FILES = ("tokenizer.json, vocab.txt, vocab.json with merges.txt, or a sentencepiece "
                    "*.model")


@functools.lru_cache(maxsize=32)
def hub_cache_only(name: str) -> bool:
    """Whether Hub model `name` must load from the local cache alone (offline, or the Hub
    cannot be reached and a copy is cached); raises when it can load from neither. Asked once
    per name (see hub.reach), not again for the tokenizer, the config and the weights."""
    from huggingface_hub import constants, try_to_load_from_cache

    why = reach(name, "model")
    if why is None:
        return False
    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        if why != OFFLINE:
            log.warning("the Hugging Face Hub cannot be reached (%s); using the cached copy of "
                        "%s", why, name)
        return True
    if why == OFFLINE:
        raise MlmkitError(f"model {name!r}: no such local directory, and not in the Hub cache "
                          f"({constants.HF_HUB_CACHE}), the only place HF_HUB_OFFLINE=1 lets "
                          "models load from; pass a local model directory, or unset "
                          "HF_HUB_OFFLINE to download it")
    raise MlmkitError(f"model {name!r}: no such local directory, and the Hugging Face Hub "
                      f"cannot be reached to download it ({why}); pass a local model "
                      "directory, or set HF_HUB_OFFLINE=1 to use models already in the local "
                      "cache")


def _hub_error(name: str, e: Exception) -> MlmkitError:
    """A failed load as one line. transformers wraps huggingface_hub's errors in OSError; the
    wrapped error's type says what happened."""
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub.utils import httpx

    cause: BaseException | None = e
    while cause is not None:
        if isinstance(cause, (RepositoryNotFoundError, RevisionNotFoundError,
                              RemoteEntryNotFoundError)):
            return refusal(name, "model", cause)
        if isinstance(cause, (OfflineModeIsEnabled, LocalEntryNotFoundError, httpx.TransportError,
                              HfHubHTTPError)):
            return MlmkitError(f"model {name!r}: the download stopped: {first_line(cause)}; "
                               "run it again, or set HF_HUB_OFFLINE=1 to use models already "
                               "in the local cache")
        cause = cause.__cause__ or cause.__context__
    return MlmkitError(f"model {name}: cannot load: {first_line(e)}")


def _hub_kwargs(name: str) -> dict[str, Any]:
    """from_pretrained's keyword arguments for Hub model `name`, once it is known to load: from
    the cache alone when the Hub cannot be used."""
    return {"local_files_only": True} if hub_cache_only(name) else {}


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """transformers' own load report and weight-loading bar off for one load, and
    huggingface_hub's retry warnings (each printed twice, by its handler and ours): mlmkit says
    what matters itself (a missing head, below), and the Python API stays quiet."""
    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hub_level = hub_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    hub_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        hub_logging.set_verbosity(hub_level)
        if bars:
            hf_logging.enable_progress_bar()


def _check_tokenizer_files(name: str, path: Path) -> None:
    files = sorted(p.name for p in path.iterdir() if p.is_file())
    if ("tokenizer.json" in files or "vocab.txt" in files
            or {"vocab.json", "merges.txt"} <= set(files)
            or any(f.endswith((".model", ".spm")) for f in files)):
        return
    partial = ("vocab.json without merges.txt; " if "vocab.json" in files
               else "merges.txt without vocab.json; " if "merges.txt" in files else "")
    raise MlmkitError(f"model {name}: no tokenizer files: {partial}expected {_TOKENIZER_FILES} "
                      f"(found: {', '.join(files) or 'nothing'}); save the tokenizer there with "
                      "tokenizer.save_pretrained, or copy the files of the model it came from")


def load_tokenizer(name: str) -> Any:
    path = model_dir(name)
    if path is not None:
        _check_tokenizer_files(name, path)
    source = {} if path is not None else _hub_kwargs(name)
    from transformers import AutoTokenizer

    try:
        with quiet_loading():
            tok = AutoTokenizer.from_pretrained(name, **source)
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


def load_model_config(name: str, weights: bool = True) -> Any:
    """The model's config; with `weights` (they will load with it), a local directory's
    weight files are checked against it first (whole, and of the shapes it builds), so a
    broken file is one line before any data is read, not a traceback after."""
    path = model_dir(name)
    if path is not None and not (path / "config.json").is_file():
        raise MlmkitError(f"model {name}: no config.json; expected a model directory written by "
                          "save_pretrained")
    source = {} if path is not None else _hub_kwargs(name)
    from transformers import AutoConfig

    try:
        with quiet_loading():
            config = AutoConfig.from_pretrained(name, **source)
    except Exception as e:
        raise _hub_error(name, e) from None
    if weights and path is not None:
        check_weights(path, config)
    return config


def max_block_size(config: Any, tokenizer: Any) -> int:
    limit = getattr(config, "max_position_embeddings", None) or 10**9
    if config.model_type in _OFFSET_POSITIONS:
        limit -= (config.pad_token_id or 0) + 1
    if 0 < getattr(tokenizer, "model_max_length", 10**30) < 10**9:
        limit = min(limit, tokenizer.model_max_length)
    return limit


def _check_weight_files(name: str, path: Path) -> None:
    if any(p.suffix in (".safetensors", ".bin") for p in path.iterdir()):
        return
    raise MlmkitError(f"model {name}: no weights (model.safetensors or pytorch_model.bin); "
                      "expected a trained model (a directory of config and tokenizer alone is "
                      "a shape for `mlmkit train --from-scratch`)")


def load_model(name: str, config: Any = None, from_scratch: bool = False,
               vocab_size: int | None = None) -> Any:
    """A masked LM in float32; with `from_scratch`, random weights of the named model's
    shape."""
    config = config if config is not None else load_model_config(name, not from_scratch)
    from transformers import MODEL_FOR_MASKED_LM_MAPPING, AutoModelForMaskedLM

    if type(config) not in MODEL_FOR_MASKED_LM_MAPPING:
        raise MlmkitError(f"model {name}: transformers has no masked-LM class for model type "
                          f"{config.model_type!r}")
    if from_scratch:
        if vocab_size is not None:
            config.vocab_size = vocab_size
        try:
            model = AutoModelForMaskedLM.from_config(config, dtype=torch.float32)
        except ValueError as e:  # a shape that does not add up, e.g. from --config-overrides
            raise MlmkitError(f"model {name}: cannot build from its config: {first_line(e)}"
                              ) from None
    else:
        path = model_dir(name)
        if path is not None:
            _check_weight_files(name, path)
        source = {} if path is not None else _hub_kwargs(name)
        model, info = _from_pretrained(name, config, source)
        missing = info.get("missing_keys") or []
        if missing:
            log.warning("%s has no trained masked-LM head (%d weights initialised fresh: "
                        "%s); its base perplexity is meaningless until it is trained",
                        name, len(missing), ", ".join(sorted(missing)[:4]))
    if vocab_size is not None and model.get_input_embeddings().num_embeddings < vocab_size:
        model.resize_token_embeddings(vocab_size)
    return model


def _from_pretrained(name: str, config: Any, source: dict[str, Any]) -> tuple[Any, dict]:
    """transformers' load, its failures one line: a file safetensors cannot read (a Hub copy
    check_weights did not see), weights of other shapes than the config's."""
    from safetensors import SafetensorError
    from transformers import AutoModelForMaskedLM

    try:
        with warnings.catch_warnings(), quiet_loading():
            warnings.simplefilter("ignore")
            # float32 whatever the checkpoint's dtype: transformers 5 loads a bf16 checkpoint
            # as bf16, and AdamW steps on bf16 weights round away to nothing. Mixed precision
            # comes from autocast; FillMask casts for inference. Mismatched shapes come back
            # in `info` (said below in one line) instead of transformers' report and error.
            model, info = AutoModelForMaskedLM.from_pretrained(
                name, config=config, output_loading_info=True, dtype=torch.float32,
                ignore_mismatched_sizes=True, **source)
    except (OSError, ValueError) as e:
        raise _hub_error(name, e) from None
    except SafetensorError as e:
        raise MlmkitError(f"model {name}: its weights cannot be read: {first_line(e)}; "
                          "re-download or re-export") from None
    mismatched = sorted(info.get("mismatched_keys") or [])
    if mismatched:
        key, stored, built = mismatched[0]
        raise MlmkitError(f"model {name}: " + mismatch("its weights", key, stored, built, config))
    return model, info


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
    if isinstance(model, OpenVinoMaskedLM):
        return model.masked_logits(input_ids, attention_mask, positions)

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
    loss, targets, _ = masked_lm_outputs(model, batch, sparse)
    return loss, (targets != -100).sum()


def masked_lm_outputs(model: Any, batch: dict[str, torch.Tensor], sparse: bool = True
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sum of token losses, targets [n], logits [n, V]) at the predicted positions of a batch
    (see `masked_lm_loss`); a target is -100 on a padding slot of `masked_index`."""
    if "masked_index" in batch:
        positions, targets = batch["masked_index"], batch["masked_labels"]
    else:
        positions = batch["labels"] != -100
        targets = batch["labels"][positions]
    logits = masked_logits(model, batch["input_ids"], batch.get("attention_mask"), positions,
                           sparse)
    loss = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum",
                                             ignore_index=-100)
    return loss, targets, logits


_DEVICES = "cpu, cuda, cuda:N, mps or auto"


def inference_model(model: Any, tokenizer: Any, device: str, dtype: str, engine: str,
                    runtime: str = "torch") -> tuple[Any, Any, torch.device, str]:
    """(model, tokenizer, device, precision) ready for inference: `model` a path or Hub id
    (loaded with its tokenizer) or a model object (then `tokenizer` is required), on `device`
    in `dtype` ('auto': bfloat16 on a GPU, else float32; 'int8': see modeling/precision.py), in
    eval mode; with `runtime` "openvino", compiled by OpenVINO (modeling/openvino.py). The
    settings are checked before the model loads, so a wrong one costs no loading time.
    `engine` names the caller in errors."""
    owned = isinstance(model, str)
    if not owned and tokenizer is None:
        raise MlmkitError(f"{engine}: pass a tokenizer along with a model object")
    if isinstance(model, OpenVinoMaskedLM):  # compiled already: as it is, on the CPU
        if device not in ("auto", "cpu"):
            raise MlmkitError(f"{named('device', device)}: the model is compiled by OpenVINO, "
                              "which runs it on the CPU; expected cpu or auto")
        return model, tokenizer, torch.device("cpu"), model.precision
    dev = pick_device(device)
    precision = check_precision(dtype, dev)
    check_runtime(runtime, dev, precision)
    if owned:
        tokenizer = tokenizer or load_tokenizer(model)
        model = load_model(model)
    if runtime == "openvino":
        return OpenVinoMaskedLM(model, precision, masked_logits), tokenizer, dev, precision
    return apply_precision(model, dev, precision, owned), tokenizer, dev, precision


def pick_device(device: str) -> torch.device:
    """`device` as a torch.device, checked against this machine; 'auto' is cuda, else mps,
    else cpu."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise MlmkitError(f"{named('device', device)}: not a device; expected {_DEVICES}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is built without CUDA" if torch.version.cuda is None else (
                "no CUDA device is visible")
            raise MlmkitError(f"{named('device', device)}: {why}; expected cpu, or auto "
                              "(which picks a GPU when there is one)")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise MlmkitError(f"{named('device', device)}: this machine has {n} CUDA device"
                              f"{'s' if n != 1 else ''} (cuda:0 to cuda:{n - 1})")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise MlmkitError(f"{named('device', device)}: MPS (Apple GPU) is not available here; "
                              "expected cpu or auto")
    elif dev.type != "cpu":
        raise MlmkitError(f"{named('device', device)}: {dev.type} devices are not supported; "
                          f"expected {_DEVICES}")
    return dev
