"""Command line: parse, call the library, print. `main(argv) -> exit code`.

One module per command (`register` adds its parser, `run` does the work); the settings'
flags are generated from the config dataclasses, so the CLI and the Python API cannot drift.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from mlmkit.cli import (
    demo_command,
    eval_command,
    fill_command,
    probe_command,
    push_command,
    score_command,
    serve_command,
    train_command,
    vocab_command,
)
from mlmkit.cli.flags import Parser
from mlmkit.cli.helptext import COMMANDS as HELP
from mlmkit.errors import MlmkitError
from mlmkit.settings import speaking_cli

log = logging.getLogger("mlmkit")

COMMANDS = {"train": train_command, "eval": eval_command, "fill": fill_command,
            "score": score_command, "demo": demo_command, "vocab": vocab_command,
            "serve": serve_command, "probe": probe_command, "push": push_command}


def build_parser() -> Parser:
    from mlmkit import __version__

    _, description, examples = HELP["mlmkit"]
    p = Parser(prog="mlmkit", description=description, epilog=examples,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"mlmkit {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS.values():
        command.register(sub)
    return p


def _parse(parser: Parser, argv: list[str]) -> argparse.Namespace:
    # An unknown flag was refused by its command's parser, with "did you mean".
    ns, extra = parser.parse_known_args(argv)
    # argparse gives the texts of `fill`/`score` only the words before the first option
    # ("fill MODEL --top-k 3 TEXT" would leave TEXT unrecognized): words after options are
    # texts too, in order.
    if extra and hasattr(ns, "texts"):
        ns.texts = [*ns.texts, *extra]
    elif extra:
        parser.fail(f"unrecognized arguments: {' '.join(extra)}")
    return ns


def _quiet_libraries() -> None:
    """Only once a command runs: importing transformers costs seconds that --help and a usage
    error must not pay."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    from mlmkit.quiet import HF_LOGGERS

    for noisy in HF_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.ERROR)
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # weight-loading bars are noise here


def main(argv: list[str] | None = None) -> int:
    with speaking_cli():  # messages name settings as flags (--overwrite), not overwrite=True
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    logging.basicConfig(level=logging.INFO, format="mlmkit: %(message)s", stream=sys.stderr)
    argv = sys.argv[1:] if argv is None else list(argv)
    ns = _parse(build_parser(), argv)
    if getattr(ns, "quiet", False):  # the result and errors only: no "data: ...", no eval lines
        logging.getLogger("mlmkit").setLevel(logging.WARNING)
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
    try:
        return COMMANDS[ns.command].run(ns, argv)
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
