"""Command line: parse, call the library, print. `main(argv) -> exit code`.

Flags of `train` and `eval` are generated from the config dataclasses (kebab-case, one flag per
field, the field's help text), so the CLI and the Python API cannot drift apart.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shlex
import sys
import textwrap
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import MISSING, fields
from typing import Any

from mlmkit.cli.helptext import COMMANDS
from mlmkit.config import (
    GROUPS,
    EvalConfig,
    MlmkitError,
    TrainConfig,
    build_config,
    read_config_file,
)
from mlmkit.io.files import atomic_open
from mlmkit.io.inputs import LineTally, check_io_paths, input_name, read_inputs

log = logging.getLogger("mlmkit")

# The command line shows progress unless --quiet; the Python API is quiet unless asked.
CLI_DEFAULTS = {"quiet": False}


def _flag(f: Any) -> tuple[str, dict[str, Any]]:
    """The kebab-case flag of a dataclass field and its add_argument keywords."""
    flag = "--" + f.name.replace("_", "-")
    default = f.default if f.default is not MISSING else f.default_factory()
    default = CLI_DEFAULTS.get(f.name, default)
    help_ = f.metadata.get("help", "").replace("%", "%%")  # argparse formats help with %
    if default not in (None, [], False, True):
        help_ += f" (default: {default})"
    kw: dict[str, Any] = {"default": argparse.SUPPRESS, "help": help_, "dest": f.name}
    t = str(f.type)
    if t == "bool":
        if default is True:  # on by default: the flag turns it off
            return "--no-" + flag[2:], {**kw, "action": "store_false",
                                        "help": f"turn off (on by default): {help_}"}
        return flag, {**kw, "action": "store_true"}
    if t.startswith("list"):
        return flag, {**kw, "action": "append", "metavar": "FIELD"}
    base = t.split("|")[0].strip()
    kw["type"] = {"int": int, "float": float}.get(base, str)
    if "choices" in f.metadata:
        kw["choices"] = f.metadata["choices"]
    return flag, kw


# Names from transformers' run_mlm.py / TrainingArguments -> the field they set. Every flag is
# also accepted in snake_case, which covers the names run_mlm.py shares with mlmkit
# (--learning_rate, --max_steps, ...). Hidden from the lists, shown in one epilog section.
RUN_MLM_NAMES = {
    "model_name_or_path": "model",
    "train_file": "data",
    "dataset_name": "data",
    "dataset_config_name": "data_config",
    "validation_file": "eval_data",
    "max_seq_length": "block_size",
    "per_device_train_batch_size": "batch_size",
    "per_device_eval_batch_size": "eval_batch_size",
    "num_train_epochs": "epochs",
    "output_dir": "output",
    "overwrite_output_dir": "overwrite",
    "resume_from_checkpoint": "resume",
}
RUN_MLM_SAME_NAMES = ("mlm_probability", "line_by_line", "seed", "learning_rate", "weight_decay",
                      "gradient_accumulation_steps", "warmup_ratio", "max_steps",
                      "save_total_limit", "report_to")


class _Parser(argparse.ArgumentParser):
    def _get_option_tuples(self, option_string: str) -> list[Any]:
        # An abbreviation such as --learning matches both --learning-rate and its alias
        # --learning_rate; that is one setting, not an ambiguity.
        tuples = super()._get_option_tuples(option_string)
        return tuples[:1] if len({t[0].dest for t in tuples}) == 1 else tuples


def _aliases(flag: str, name: str) -> list[str]:
    snake = "--" + flag[2:].replace("-", "_")
    return ([snake] if snake != flag else []) + [
        "--" + alias for alias, target in RUN_MLM_NAMES.items() if target == name]


def _alias_help(cls: type) -> str:
    names = [f.name for f in fields(cls)]
    rows = [(", ".join("--" + a for a, n in RUN_MLM_NAMES.items() if n == name),
             "--" + name.replace("_", "-"))
            for name in dict.fromkeys(RUN_MLM_NAMES.values()) if name in names]
    same = ", ".join("--" + n for n in RUN_MLM_SAME_NAMES if n in names)
    return "\n".join([
        "run_mlm.py names (accepted, not listed above; each sets the same setting):",
        *(f"  {aliases:<30} = {flag}" for aliases, flag in rows),
        "  and every flag spelled with _ for - (--block_size = --block-size), so also",
        "  run_mlm.py's own names:",
        *textwrap.wrap(same, 76, initial_indent="  ", subsequent_indent="  ")])


def _add_dataclass_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """A flag per field, listed in the section its `group` names (config.GROUPS), plus its
    hidden aliases (snake_case, run_mlm.py's names), which set the same field."""
    used = {f.metadata["group"] for f in fields(cls)}
    sections = {k: parser.add_argument_group(title) for k, title in GROUPS.items() if k in used}
    for f in fields(cls):
        flag, kw = _flag(f)
        section = sections[f.metadata["group"]]
        section.add_argument(flag, **kw)
        for alias in _aliases(flag, f.name):
            section.add_argument(alias, **{**kw, "help": argparse.SUPPRESS})
    parser.epilog = "\n\n".join(filter(None, [parser.epilog, _alias_help(cls)]))


def _command(sub: Any, name: str, **kw: Any) -> argparse.ArgumentParser:
    help_, description, examples = COMMANDS[name]
    return sub.add_parser(name, help=help_, description=description, epilog=examples,
                          formatter_class=argparse.RawDescriptionHelpFormatter, **kw)


def build_parser() -> argparse.ArgumentParser:
    _, description, examples = COMMANDS["mlmkit"]
    p = _Parser(prog="mlmkit", description=description, epilog=examples,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    from mlmkit import __version__

    p.add_argument("--version", action="version", version=f"mlmkit {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    # The generated usage would list every setting; the sections below do that better.
    t = _command(sub, "train", usage="%(prog)s [-h] [--config FILE] [--model MODEL] "
                 "[--data DATA]\n" + " " * 20 + "[--output DIR] [--SETTING VALUE ...]")
    t.add_argument("--config", metavar="FILE", help="YAML/TOML file of settings (flags win)")
    _add_dataclass_flags(t, TrainConfig)

    e = _command(sub, "eval", usage="%(prog)s [-h] [--config FILE] [--json] [--model MODEL] "
                 "[--data DATA]\n" + " " * 19 + "[--SETTING VALUE ...]")
    e.add_argument("--config", metavar="FILE", help="YAML/TOML file of settings (flags win)")
    e.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    _add_dataclass_flags(e, EvalConfig)

    f = _command(sub, "fill")
    f.add_argument("model", help="Hub id or local model directory")
    f.add_argument("texts", nargs="*", help="texts with a mask, written <mask> or [MASK] "
                   "whatever the model's own mask token; '-' or none reads stdin")
    f.add_argument("--input", help="file of texts: .txt (one per line) or .jsonl ('text' field); "
                   "'-' or /dev/stdin reads stdin")
    f.add_argument("--output", help="write JSON lines here instead of stdout")
    f.add_argument("--top-k", type=int, default=5, help="candidates per mask (default: 5)")
    f.add_argument("--targets", nargs="+", help="restrict candidates to these words")
    f.add_argument("--json", action="store_true", help="print the pipeline's records as JSON "
                   "lines, one per text")
    f.add_argument("--batch-size", type=int, default=None, help="most texts per forward pass "
                   "(default: 32 on CPU, 256 on GPU)")
    f.add_argument("--max-tokens", type=int, default=None, help="most tokens per forward pass, "
                   "counted after padding (default: no limit on CPU, 16384 on GPU)")
    f.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps or auto")
    f.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    f.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_ray_flags(f)

    c = _command(sub, "score")
    c.add_argument("model", help="Hub id or local model directory")
    c.add_argument("texts", nargs="*", help="texts to score; '-' or none reads stdin")
    c.add_argument("--input", help="file of texts: .txt (one per line) or .jsonl ('text' field; "
                   "with --rescore, n-best records); '-' or /dev/stdin reads stdin")
    c.add_argument("--output", help="write JSON lines here instead of stdout")
    c.add_argument("--metric", default="original", help="original (one token masked at a "
                   "time), word-l2r (also the later pieces of its word) or whole-word "
                   "(default: original)")
    c.add_argument("--per-token", action="store_true", help="add each scored token's "
                   "log-probability (token_logprobs) to the records")
    c.add_argument("--json", action="store_true", help="print JSON lines, one per text")
    c.add_argument("--rescore", action="store_true", help="re-rank n-best lists: JSON lines "
                   "with candidates [{text, score}]; total = score + weight * PLL")
    c.add_argument("--weight", type=float, default=1.0, help="weight of the PLL in --rescore's "
                   "total (default: 1.0)")
    c.add_argument("--max-tokens", type=int, default=None, help="most tokens per forward pass, "
                   "counted after padding; bounds memory (default: 2048 on CPU, 32768 on GPU)")
    c.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps or auto")
    c.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_ray_flags(c)

    d = _command(sub, "demo")
    d.add_argument("--data", default=None, help="corpus with an answers.text field (default: "
                   "the 1,000 ELI5 records in assets/)")
    d.add_argument("--output", default="runs/demo", help="where the adapted model goes "
                   "(default: runs/demo; replaced if an earlier demo wrote it)")
    d.add_argument("--quiet", action="store_true", help="no progress bars")

    v = _command(sub, "vocab").add_subparsers(dest="vocab_command", required=True)
    for name, what in (("audit", "tokens per word and the costliest words"),
                       ("extend", "add the costliest words as whole-word tokens")):
        c = v.add_parser(name, help=what, description=what)
        c.add_argument("model", help="Hub id or local model directory")
        c.add_argument("--data", required=True, help="corpus, as for train: files, a directory, "
                       "a glob or a Hub dataset id")
        c.add_argument("--text-field", action="append", default=[], metavar="FIELD",
                       help="dotted path to the text, e.g. answers.text (repeatable)")
        c.add_argument("--split", default="train", help="split, slicing allowed (as for train)")
        c.add_argument("--limit", type=int, default=None, help="take only the first N records")
        c.add_argument("--top", type=int, default=20, help="costliest words listed (default: 20)")
        c.add_argument("--json", action="store_true", help="print the result as one JSON object")
        if name == "extend":
            c.add_argument("--add", type=int, required=True, help="words to add")
            c.add_argument("--output", required=True, help="directory for the extended model")
            c.add_argument("--overwrite", action="store_true", help="replace an output "
                           "directory mlmkit wrote")

    s = _command(sub, "serve")
    s.add_argument("model", help="Hub id or local model directory")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: "
                   "127.0.0.1, this machine only; 0.0.0.0 exposes it to the network)")
    s.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000)")
    s.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps or auto")
    s.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    s.add_argument("--max-batch-size", type=int, default=32,
                   help="most texts run through the model together (default: 32)")
    s.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="how long a batch waits for more requests, in ms (default: 5)")
    s.add_argument("--max-queue", type=int, default=256, help="texts waiting past which "
                   "requests are refused with 503 (default: 256)")
    s.add_argument("--body-timeout-s", type=float, default=10.0, help="seconds a request's "
                   "body may take to arrive whole before it is answered 408 (default: 10)")
    s.add_argument("--no-batching", action="store_true",
                   help="run every request on its own (for comparison)")
    return p


RAY_FLAGS = ("address", "workers", "gpus_per_worker", "cpus_per_worker", "shard_rows", "format")


def _add_ray_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("on a Ray cluster (--engine ray; pip install 'mlmkit[ray]')")
    g.add_argument("--engine", choices=["local", "ray"], default="local", help="local: in this "
                   "process; ray: Ray Data actors, --input a file, directory or glob (s3://, "
                   "gs:// too), --output a directory, resumable (default: local)")
    g.add_argument("--address", help="Ray cluster to join: auto or HOST:PORT (default: start "
                   "a local Ray)")
    g.add_argument("--workers", type=int, metavar="N",
                   help="actors, each with its own model (default: 1)")
    g.add_argument("--gpus-per-worker", type=float, metavar="G",
                   help="GPUs per actor (default: 0)")
    g.add_argument("--cpus-per-worker", type=float, metavar="C",
                   help="CPUs per actor, and its torch threads on a CPU (default: 1)")
    g.add_argument("--shard-rows", type=int, metavar="ROWS", help="input rows per shard: the "
                   "unit of work, of output files and of resuming (default: 10000)")
    g.add_argument("--format", choices=["parquet", "jsonl"], help="output files (default: "
                   "parquet)")


def _run_on_ray(ns: argparse.Namespace, params: Any) -> int:
    """`--engine ray`: the input's records through `batch.run_batch` for the task of `params`,
    into a directory."""
    from mlmkit.batch.ray import BatchJob, BatchResources, run_batch

    if any(t != "-" for t in ns.texts) or ns.input in (None, "-"):
        raise MlmkitError("--engine ray: reads --input (a file, directory or glob), not texts "
                          "on the command line or stdin")
    if not ns.output:
        raise MlmkitError("--engine ray: needs --output DIR (a directory for the shards' files)")
    job = BatchJob.of(params, ns.model, dtype=ns.dtype, shard_rows=ns.shard_rows or 10_000,
                      format=ns.format or "parquet")
    given = {k: v for k, v in vars(ns).items() if k in RAY_FLAGS and v is not None}
    res = BatchResources(**{k: v for k, v in given.items() if k not in ("shard_rows", "format")},
                         device=ns.device, batch_size=getattr(ns, "batch_size", None),
                         max_tokens=ns.max_tokens, quiet=ns.quiet)
    r = run_batch(job, ns.input, ns.output, res)
    print(r.summary(), file=sys.stderr)
    return 1 if r.errors else 0


def _refuse_ray_flags(ns: argparse.Namespace) -> None:
    for k in RAY_FLAGS:
        if getattr(ns, k, None) is not None:
            raise MlmkitError(f"--{k.replace('_', '-')}: only with --engine ray")


def _config(cls: type, ns: argparse.Namespace, base: dict[str, Any] | None = None) -> Any:
    """defaults < `base` (a run's saved settings) < config file < flags."""
    flags = {k: v for k, v in vars(ns).items() if k not in ("command", "config", "json")}
    file_values = read_config_file(ns.config) if getattr(ns, "config", None) else {}
    known = {f.name for f in fields(cls)}
    layered = {**CLI_DEFAULTS, **{k: v for k, v in (base or {}).items() if k in known},
               **file_values}
    return build_config(cls, layered, flags)


def _cmd_train(ns: argparse.Namespace, argv: list[str]) -> int:
    from mlmkit.training.checkpoint import read_run_config, run_dir_of
    from mlmkit.training.torch_recipe import train

    # A resumed run starts from its own saved settings: flags repeat them or change the few
    # that may change (the run checks which).
    base = None
    if getattr(ns, "resume", None):
        run = run_dir_of(ns.resume, getattr(ns, "output", None))
        base = {k: v for k, v in read_run_config(run).items()
                if k not in ("output", "resume", "overwrite")}
    cfg = _config(TrainConfig, ns, base)
    r = train(cfg, command="mlmkit " + shlex.join(argv))
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun / accelerate launch: print once
        return 0
    if r.finished_before:
        print(f"{r.output_dir}: already trained ({r.steps} steps); pass a larger --epochs or "
              "--max-steps to train further")
        return 0
    lines = [f"saved {r.output_dir} ({r.steps} steps, {r.train_seconds:.1f} s of training)"]
    if r.base:
        lines.append(f"perplexity before: {r.base.perplexity:.3f} (loss {r.base.loss:.4f}, "
                     f"{r.base.tokens:,} fixed masked tokens)")
    if r.final:
        lines.append(f"perplexity after:  {r.final.perplexity:.3f} (loss {r.final.loss:.4f})")
    print("\n".join(lines))
    return 0


def _cmd_eval(ns: argparse.Namespace) -> int:
    from mlmkit.training.checkpoint import run_eval_settings
    from mlmkit.training.perplexity import run_eval

    # A run's directory: by default its own data settings and held-out split, so the number
    # printed is the run's own.
    run = run_eval_settings(ns.model) if "data" not in ns and getattr(ns, "model", None) else None
    cfg = _config(EvalConfig, ns, run)
    m, stats = run_eval(cfg)
    if ns.json:
        print(json.dumps({"model": cfg.model, **m.to_dict()}))
    else:
        print(f"{cfg.model}: perplexity {m.perplexity:.3f} (loss {m.loss:.4f}) on {m.tokens:,} "
              f"masked tokens in {m.blocks:,} blocks (eval seed {cfg.eval_seed})")
    return 0


def _cmd_fill(ns: argparse.Namespace) -> int:
    from mlmkit.inference.params import FillParams
    from mlmkit.inference.tasks import FILL

    params = FillParams(ns.top_k, ns.targets)  # checked before anything loads
    if ns.engine == "ray":
        return _run_on_ray(ns, params)
    _refuse_ray_flags(ns)
    check_io_paths(ns.texts, ns.input, ns.output)
    fm = FILL.load(ns.model, device=ns.device, dtype=ns.dtype, batch_size=ns.batch_size,
                   max_tokens=ns.max_tokens)

    def plain(res: list, out: Any) -> None:
        groups = res if res and isinstance(res[0], list) else [res]
        for g, recs in enumerate(groups):
            head = f"[mask {g + 1}] " if len(groups) > 1 else ""
            for r in recs:
                out.write(f"{head}{r['score']:.4f}  {r['sequence']}\n")

    return _write_results(ns, lambda texts: FILL.run(fm, texts, params), plain,
                          LineTally("could not be filled"), "filling", gap=True)


def _cmd_score(ns: argparse.Namespace) -> int:
    from mlmkit.inference.params import RescoreParams, ScoreParams
    from mlmkit.inference.tasks import task_for

    # Checked before anything loads; the task follows from the parameters' type.
    params = (RescoreParams(ns.weight, ns.metric, ns.per_token) if ns.rescore
              else ScoreParams(ns.metric, ns.per_token))
    if ns.engine == "ray":
        return _run_on_ray(ns, params)
    _refuse_ray_flags(ns)
    check_io_paths(ns.texts, ns.input, ns.output)
    if ns.rescore and any(t != "-" for t in ns.texts):
        raise MlmkitError("--rescore: reads n-best records from --input or stdin, not texts on "
                          "the command line")
    task = task_for(params)
    scorer = task.load(ns.model, device=ns.device, dtype=ns.dtype, max_tokens=ns.max_tokens)
    if ns.rescore:
        return _write_results(
            ns, lambda recs: task.run(scorer, recs, params), None,
            LineTally("could not be rescored"), "rescoring", whole_record=task.reads_records)

    def plain(rec: dict, out: Any) -> None:
        out.write(f"{rec['pll']:12.4f}  {rec['pppl']:10.3f}  {rec['text']}\n")

    return _write_results(ns, lambda texts: task.run(scorer, texts, params), plain,
                          LineTally("could not be scored"), "scoring")


def _write_results(ns: argparse.Namespace, run: Callable[[Iterable], Iterable], plain: Any,
                   tally: LineTally, doing: str, gap: bool = False,
                   whole_record: bool = False) -> int:
    """Run every input through `run` (the engine's stream: results in input order, an
    `MlmkitError` in place of a failed one) and write the results: JSON lines with --json or
    --output (or without a `plain` printer), else `plain(result, out)`. Texts given on the
    command line must all succeed: a bad one is an error of the command. A bad line of --input
    or stdin is reported by its number, as an error record in its place (JSON) or on stderr,
    and the rest go on; the counts are printed at the end, and the exit code is 1 if any line
    failed. The output file appears under its name only once complete, so a failed or killed
    run leaves any earlier file of that name as it was."""
    as_json = ns.json or bool(ns.output) or plain is None
    typed = ns.input is None and any(t != "-" for t in ns.texts)
    name = input_name(ns.input)
    pending: deque[tuple[int, str | None]] = deque()  # read, and not written yet

    def items() -> Iterator[Any]:
        for n, item, problem in read_inputs(ns.texts, ns.input, tally, jsonl=True if
                                            whole_record else None, whole_record=whole_record):
            pending.append((n, problem))
            yield item

    with contextlib.ExitStack() as stack:
        out = stack.enter_context(atomic_open(ns.output)) if ns.output else sys.stdout
        bar = None
        if ns.output and not ns.quiet:
            from tqdm.auto import tqdm

            bar = stack.enter_context(tqdm(desc=doing, unit=" lines"))
        shown = 0
        for res in run(items()):
            n, problem = pending.popleft()
            tally.lines += 1
            if problem is not None or isinstance(res, MlmkitError):
                if typed:
                    raise res
                tally.failed += 1
                message = f"{name}: line {n}: {problem or res}"
                if as_json:
                    out.write(json.dumps({"line": n, "error": message}) + "\n")
                else:
                    print(f"error: {message}", file=sys.stderr)
            elif as_json:
                out.write(json.dumps(res) + "\n")
            else:
                if shown and gap:
                    out.write("\n")  # a blank line between texts' candidates
                shown += 1
                plain(res, out)
            if bar is not None:
                bar.update(1)
    summary = tally.summary()
    if summary:
        print(summary, file=sys.stderr)
    return 1 if tally.failed else 0


def _cmd_demo(ns: argparse.Namespace) -> int:
    from mlmkit.demo import default_demo_data, run_demo

    run_demo(ns.data or default_demo_data(), ns.output, quiet=ns.quiet)
    return 0


def _cmd_vocab(ns: argparse.Namespace) -> int:
    from mlmkit.vocab import audit_vocab, extend_vocab, format_audit

    data = {"text_field": ns.text_field, "limit": ns.limit, "split": ns.split}
    if ns.vocab_command == "audit":
        audit = audit_vocab(ns.model, ns.data, ns.top, **data)
        print(json.dumps({"model": ns.model, **audit.to_dict()}) if ns.json
              else format_audit(ns.model, audit))
        return 0
    r = extend_vocab(ns.model, ns.data, ns.add, ns.output, overwrite=ns.overwrite, top=ns.top,
                     **data)
    print(json.dumps(r.to_dict()) if ns.json else r.summary())
    return 0


def _cmd_serve(ns: argparse.Namespace) -> int:
    try:
        import fastapi  # noqa: F401  (checked here for a one-line error instead of a traceback)
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401

        from mlmkit.serving.app import check_limits, serve
    except ImportError as e:
        raise MlmkitError(f"serve needs {e.name}: pip install 'mlmkit[serve]'") from None
    from mlmkit.inference.fill import FillMask

    # Before the model loads, and under the flags' names (FillMask would say batch_size).
    check_limits(max_batch_size=ns.max_batch_size, max_wait_ms=ns.max_wait_ms,
                 max_queue=ns.max_queue, body_timeout_s=ns.body_timeout_s)

    engine = FillMask(ns.model, device=ns.device, dtype=ns.dtype, batch_size=ns.max_batch_size)
    serve(engine, host=ns.host, port=ns.port, max_batch_size=ns.max_batch_size,
          max_wait_ms=ns.max_wait_ms, max_queue=ns.max_queue, batching=not ns.no_batching,
          body_timeout_s=ns.body_timeout_s)
    return 0


def _quiet_libraries() -> None:
    """Only once a command runs: importing transformers costs seconds that --help and a usage
    error must not pay."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    for noisy in ("transformers", "datasets", "accelerate", "httpx", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # weight-loading bars are noise here


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="mlmkit: %(message)s", stream=sys.stderr)
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    ns, extra = parser.parse_known_args(argv)
    # argparse gives the texts of `fill`/`score` only the words before the first option
    # ("fill MODEL --top-k 3 TEXT" would leave TEXT unrecognized): words after options are
    # texts too, in order.
    if extra and hasattr(ns, "texts") and not any(a.startswith("-") and a != "-" for a in extra):
        ns.texts = [*ns.texts, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        # A mistyped model path is refused before the seconds of importing transformers.
        model = getattr(ns, "model", None)
        if isinstance(model, str):
            from mlmkit.io.hub import model_dir

            model_dir(model)
    except MlmkitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    _quiet_libraries()  # every command loads a model
    handler = {"train": _cmd_train, "eval": _cmd_eval, "fill": _cmd_fill,
               "score": _cmd_score, "serve": _cmd_serve, "demo": _cmd_demo,
               "vocab": _cmd_vocab}[ns.command]
    try:
        return handler(ns, argv) if ns.command == "train" else handler(ns)
    except MlmkitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        # A file problem no check foresaw (disk full, a permission changed mid-run): still
        # one line naming the file; the traceback only with --debug-style logging.
        log.debug("file error", exc_info=True)
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f"error: {e or 'interrupted'}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
