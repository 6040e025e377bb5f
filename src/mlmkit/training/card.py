"""A run's model card (huggingface_hub's `ModelCard`): Hub metadata, what the model is, its
fixed-mask results before and after, data, settings, the command and the hardware it ran on.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlmkit.errors import MlmkitError
from mlmkit.io.sources import resolve_files

if TYPE_CHECKING:
    from huggingface_hub import ModelCard

CARD_FILE = "README.md"
CARD_TAGS = ["mlmkit", "fill-mask", "masked-lm"]
NOT_MEASURED = "not measured"


@dataclass
class CardInfo:
    """What the model card says about a run that the metrics and settings do not hold."""

    base_model: str  # cfg.model as given: a Hub id or a local path
    datasets: list[str]  # Hub dataset ids or local file names
    command: str  # the command line that ran, or "mlmkit.train(...) (Python API)"
    hardware: str  # describe_hardware(accelerator)
    train_seconds: float
    from_scratch: bool = False
    license: str | None = None  # None: the local base model's license, when its card has one
    precision: str | None = None  # what ran: "bf16", "fp16" or "no"; None: not recorded


# --------------------------------------------------------------------------- facts


def is_hub_model(name: str) -> bool:
    """A model named by Hub id: no such local path (the rule transformers loads by), and a
    well-formed repository id."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if Path(name).expanduser().exists():
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def is_hub_dataset(name: str) -> bool:
    """A corpus named by Hub id: what `data.resolve_files` does not take for local files."""
    try:
        return resolve_files(name) is None
    except MlmkitError:  # a local path, missing here
        return False


def base_license(model: str) -> str | None:
    """The `license` in a local base model's README.md metadata; None for a Hub id (no
    network), a directory without a card, or a card without one."""
    from huggingface_hub import ModelCard

    readme = Path(model).expanduser() / CARD_FILE
    if is_hub_model(model) or not readme.is_file():
        return None
    import logging

    # A card without a metadata block is no error here: it just names no license.
    hub_log = logging.getLogger("huggingface_hub.repocard")
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)
    try:
        found = ModelCard.load(readme, ignore_metadata_errors=True).data.get("license")
    except Exception:  # a card that does not parse says nothing about the license
        return None
    finally:
        hub_log.setLevel(level)
    return found if isinstance(found, str) and found else None


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def describe_hardware(accelerator: Any = None) -> str:
    """What a run ran on, in words: "2 x NVIDIA H200, bf16, torch 2.6.0" or "CPU: AMD EPYC
    7B13, 2 cores, torch 2.6.0". Without an accelerator, this machine's first device."""
    import torch

    processes = accelerator.num_processes if accelerator is not None else 1
    if accelerator is not None:
        device = accelerator.device
    else:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        where = f"{processes} x {torch.cuda.get_device_name(device)}"
    elif device.type == "cpu":
        where = f"CPU: {_cpu_name()}, {os.cpu_count()} cores"
        if processes > 1:
            where += f", {processes} processes"
    else:
        where = f"{processes} x {device.type}"
    precision = getattr(accelerator, "mixed_precision", "no")
    if precision and precision != "no":
        where += f", {precision} mixed precision"
    return f"{where}, torch {torch.__version__}"


# --------------------------------------------------------------------------- the card


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|")


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _number(value: Any, digits: int = 2) -> str:
    if value is None:
        return NOT_MEASURED
    if isinstance(value, bool):
        return "yes" if value else "no"
    if not isinstance(value, (int, float)):
        return str(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:,.{digits}f}"


def _percent(value: Any) -> str:
    return NOT_MEASURED if value is None else f"{value:.1%}"


def _plural(n: float, noun: str) -> str:
    return f"{n:,g} {noun}" + ("" if n == 1 else "s")


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def held_out(metrics: dict[str, Any], config: dict[str, Any]) -> str:
    """Where the evaluation records came from, as measured: the split by hash gives each record
    an `eval_fraction` chance, so the share held out is counted, not assumed."""
    if config.get("eval_data"):
        return f"every record of `{config['eval_data']}`"
    data = metrics.get("data") or {}
    fraction = f"eval_fraction {config.get('eval_fraction', 0):g}, seed {config.get('seed')}"
    held, kept = data.get("eval_records"), data.get("train_records")
    if held is None or kept is None:  # metrics written without the counts
        return f"records held out by {fraction}"
    total = held + kept
    return (f"{held:,} of {total:,} records ({held / total if total else 0:.1%}) held out by "
            f"{fraction}")


def _duration(seconds: float) -> str:
    s = round(seconds)
    if s < 60:
        return f"{seconds:.1f} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _model_link(name: str) -> str:
    if is_hub_model(name):
        return f"[{name}](https://huggingface.co/{name})"
    return f"the local model `{name}`"


def _dataset_links(names: list[str]) -> str:
    links = [f"[{n}](https://huggingface.co/datasets/{n})" if is_hub_dataset(n) else f"`{n}`"
             for n in names]
    if not links:
        return "an unnamed corpus"
    return links[0] if len(links) == 1 else ", ".join(links[:-1]) + " and " + links[-1]


def _intro(name: str, card: CardInfo, config: dict[str, Any]) -> str:
    data = _dataset_links(card.datasets)
    if not card.from_scratch:
        return (f"**{name}** is {_model_link(card.base_model)} fine-tuned with masked language "
                f"modeling on {data}.")
    tokenizer = (f", with a new tokenizer of {config['train_tokenizer']:,} tokens trained on "
                 "the same text" if config.get("train_tokenizer") else "")
    return (f"**{name}** is a masked language model trained from scratch (random "
            f"initialisation, the architecture of {_model_link(card.base_model)}{tokenizer}) "
            f"on {data}.")


def _results(card: CardInfo, metrics: dict[str, Any], config: dict[str, Any]) -> str:
    base, final = metrics.get("base"), metrics.get("final")
    if base is None and final is None:
        return (f"Perplexity was {NOT_MEASURED}: the run had no held-out data "
                "(`eval_fraction` 0 and no `eval_data`).")
    before = "Random initialisation" if card.from_scratch else f"Base ({card.base_model})"
    rows = [[label, _number(m.get("loss"), 4), _number(m.get("perplexity")),
             _percent(m.get("accuracy")), _percent(m.get("top5_accuracy"))]
            for label, m in ((before, base or {}), ("This model", final or {}))]
    measured = final or base
    masks = (f"fixed masks (eval seed {config.get('eval_seed')}, "
             f"{config.get('mlm_probability', 0.15):.0%} of tokens selected) of "
             f"{measured['blocks']:,} held-out blocks of {config.get('block_size')} tokens "
             f"({measured['tokens']:,} predicted tokens; {held_out(metrics, config)})")
    if base is None:
        text = (f"Measured on {masks}; the base model was {NOT_MEASURED} "
                "(`skip_base_eval`).")
    elif final is None:
        text = f"Measured on {masks}; the trained model was {NOT_MEASURED}."
    else:
        change = final["perplexity"] / base["perplexity"] - 1 if base["perplexity"] else 0.0
        text = (f"Both rows are measured on the same {masks}, so they compare directly: "
                f"training changed perplexity by {change:+.1%}.")
        if base.get("accuracy") is not None and final.get("accuracy") is not None:
            text += (f" The model's first guess for a masked token is right "
                     f"{final['accuracy']:.1%} of the time, against {base['accuracy']:.1%} "
                     "before.")
    text += (" Perplexity is exp of the token-weighted mean loss; lower is better. Top-1 and "
             "top-5 accuracy: the share of masked positions whose original token is the "
             "model's highest logit, or among its five highest; higher is better.")
    return _table(["Model", "Masked-LM loss", "Perplexity", "Top-1 accuracy",
                   "Top-5 accuracy"], rows) + "\n\n" + text


def _history(metrics: dict[str, Any], most: int = 20) -> str:
    history = metrics.get("history") or []
    if len(history) < 2:
        return ""
    # Evenly thinned, the last evaluation always kept; metrics.json has every one.
    every = -(-len(history) // most)
    shown = history[::-1][::every][::-1]
    rows = [[h.get("step"), _number(h.get("epoch")), _number(h.get("loss"), 4),
             _number(h.get("perplexity")), _percent(h.get("accuracy"))] for h in shown]
    note = "" if every == 1 else (f"\n\nEvery {_ordinal(every)} evaluation; all are in "
                                  "`metrics.json`.")
    header = ["Step", "Epoch", "Loss", "Perplexity", "Top-1 accuracy"]
    return "### During training\n\n" + _table(header, rows) + note


def _probes(metrics: dict[str, Any]) -> str:
    """The --probe results: base and this model side by side, with the difference."""
    from mlmkit.training.probes import PROBE_HEADER, probe_rows

    section = metrics.get("probe")
    if not section:
        return ""
    text = ("Measured with `mlmkit probe`'s tasks on the base model before training and on this "
            "model: the difference is this model's result minus the base's on the same items "
            "(percentage points; MRR as a fraction), with a paired bootstrap 95% interval and "
            "McNemar's exact p. `metrics.json` has every group and what each metric measures.")
    caveats = {p["tuned"]["caveat"] for p in section.values() if p["tuned"].get("caveat")}
    return "\n\n".join(["### Probes", _table(PROBE_HEADER, probe_rows(section)), text,
                         *sorted(caveats)])


def _data(metrics: dict[str, Any], config: dict[str, Any]) -> str:
    rows = [["Source", f"`{config.get('data')}`"]]
    if config.get("eval_data"):
        rows.append(["Evaluation source", f"`{config['eval_data']}`"])
    data = metrics.get("data") or {}
    if "eval_blocks" in data:
        rows.append(["Held-out blocks", f"{data['eval_blocks']:,} (from "
                     f"{held_out(metrics, config)})"])
    for key, value in data.items():
        # File digests and the like stay in metrics.json; the sources and the split are the
        # rows above.
        if isinstance(value, dict) or key in ("source", "eval_source", "dtype", "eval_held_out"):
            continue
        if isinstance(value, (list, tuple)):
            value = ", ".join(map(str, value)) or "-"
        rows.append([key.replace("_", " ").capitalize(), _number(value, 4)])
    return _table(["Statistic", "Value"], rows)


def _precision(ran: str | None, asked: str | None) -> str:
    """What ran ("bf16", "fp16", "no": float32), with what was asked when it differs."""
    if ran is None:
        return f"{asked} (what ran was not recorded)"
    shown = "no (float32)" if ran == "no" else ran
    return shown if ran == asked else f"{shown} (asked: {asked})"


def _hyperparameters(metrics: dict[str, Any], config: dict[str, Any], mask_token: str,
                     card_precision: str | None = None) -> str:
    c = config.get
    mask, rand = c("mask_replace_prob", 0.8), c("random_replace_prob", 0.1)
    warmup = (f"{c('warmup_steps')} steps of" if c("warmup_steps") else
              f"{c('warmup_ratio'):.0%} of steps in" if c("warmup_ratio") else "no")
    batch = f"{c('batch_size')} blocks per device"
    if (c("gradient_accumulation_steps") or 1) > 1:
        batch += f" x {c('gradient_accumulation_steps')} accumulated micro-batches"
    rows = [
        ["Learning rate", f"{c('learning_rate'):g} (AdamW, {c('lr_scheduler')} schedule, "
                          f"{warmup} warmup, weight decay {c('weight_decay')})"],
        ["Batch size", batch],
        ["Epochs", f"{c('epochs'):g}" + (f" (capped at {_plural(c('max_steps'), 'step')})"
                                           if c("max_steps") else "")],
        ["Optimizer steps", _number(metrics.get("steps"))],
        ["Block size", f"{c('block_size')} tokens"],
        ["MLM probability", c("mlm_probability")],
        ["Selected tokens", f"{mask:.0%} `{mask_token}`, {rand:.0%} random token, "
                            f"{1 - mask - rand:.0%} unchanged"],
        ["Whole-word masking", "yes" if c("whole_word_mask") else "no"],
        ["Gradient clipping", c("max_grad_norm") or "none"],
        ["Mixed precision", _precision(card_precision, c("mixed_precision"))],
        ["Seed", c("seed")],
        ["Eval seed", c("eval_seed")],
    ]
    return _table(["Setting", "Value"], rows)


def _literal(text: str) -> str:  # a Python string literal in double quotes
    return json.dumps(text, ensure_ascii=False)


def _loading(ref: str) -> str:
    """The usage snippet's line that names the model: the one a push to another repository
    rewrites (`card_for_repo`)."""
    return f"pipeline(\"fill-mask\", model={_literal(ref)})"


_LOADING = re.compile(r'pipeline\("fill-mask", model=("(?:[^"\\]|\\.)*")\)')


def _usage(ref: str, mask_token: str) -> str:
    return ("```python\nfrom transformers import pipeline\n\n"
            f"fill = {_loading(ref)}\n"
            f"print(fill({_literal(f'The answer is {mask_token}.')}))\n```")


def card_for_repo(text: str, repo_id: str) -> str:
    """The model card `text` (as `render_model_card` wrote it) naming the Hub repository
    `repo_id` where it names another one or a local directory: in its title, its first
    sentence, the usage snippet and the model-index name, as a card rendered for `repo_id`
    would. Everything else, edits by hand included, is kept; a card that is not mlmkit's is
    returned as it is."""
    from huggingface_hub import ModelCard

    card = ModelCard(text)
    body = card.text
    loading, title = _LOADING.search(body), re.search(r"^# (.+)$", body, re.MULTILINE)
    if loading is None or title is None:
        return text
    name = title[1]
    if (name, json.loads(loading[1])) == (repo_id, repo_id):
        return text
    body = body.replace(loading[0], _loading(repo_id), 1)
    body = body.replace(f"# {name}\n", f"# {repo_id}\n", 1)
    body = body.replace(f"**{name}** is ", f"**{repo_id}** is ", 1)
    if card.data.model_name is None:  # the metadata as it was, byte for byte
        return text[: len(text) - len(card.text)] + body
    card.data.model_name = repo_id
    return f"---\n{card.data.to_yaml()}\n---\n{body}"


def _eval_results(metrics: dict[str, Any], config: dict[str, Any]) -> list[Any]:
    """The final perplexity as model-index metadata, when its corpus is a Hub dataset (the Hub
    links results to datasets by id)."""
    from huggingface_hub import EvalResult

    source = config.get("eval_data") or config.get("data")
    final = metrics.get("final")
    if final is None or not source or not is_hub_dataset(source):
        return []
    return [EvalResult(task_type="fill-mask", task_name="Masked language modeling",
                       dataset_type=source, dataset_name=source,
                       dataset_config=None if config.get("eval_data") else config.get(
                           "data_config"),
                       metric_type="perplexity", metric_name="Fixed-mask perplexity",
                       metric_value=round(final["perplexity"], 3))]


def render_model_card(card: CardInfo, metrics: dict[str, Any], config: dict[str, Any], *,
                      mask_token: str = "<mask>") -> ModelCard:
    """The model card (a `huggingface_hub.ModelCard`) for a run: Hub metadata, what the model
    is, fixed-mask results before and after, data, settings, command, hardware, usage."""
    from huggingface_hub import ModelCard, ModelCardData

    from mlmkit import __version__  # at call time: the package imports this module's users first

    ref = config.get("push_to_hub") or config.get("output") or "path/to/model"
    name = config.get("push_to_hub") or Path(config.get("output") or "model").name
    license_ = card.license or (None if card.from_scratch else base_license(card.base_model))
    hub_datasets = [d for d in card.datasets if is_hub_dataset(d)]
    evals = _eval_results(metrics, config)
    data = ModelCardData(
        base_model=card.base_model if is_hub_model(card.base_model) else None,
        datasets=hub_datasets or None, license=license_, library_name="transformers",
        pipeline_tag="fill-mask", tags=CARD_TAGS, model_name=name if evals else None,
        eval_results=evals or None)
    sections = [
        f"# {name}", _intro(name, card, config),
        "## Results", _results(card, metrics, config), _history(metrics), _probes(metrics),
        "## Training data", _data(metrics, config),
        "## Training", _hyperparameters(metrics, config, mask_token, card.precision),
        f"Trained for {_duration(card.train_seconds)} (optimizer steps only; evaluation and "
        f"checkpoints not counted) on {card.hardware or 'unrecorded hardware'}, with mlmkit "
        f"{__version__}. The command:",
        f"```\n{card.command or 'not recorded'}\n```",
        "## How to use", _usage(ref, mask_token),
        "`metrics.json` holds every evaluation and `train_config.json` every setting of "
        "the run.",
    ]
    body = "\n\n".join(s for s in sections if s)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}\n")
