"""`mlmkit demo`: the whole job on a real pretrained masked LM, offline after one download."""

from __future__ import annotations

import argparse

from mlmkit.cli.flags import add_command


def register(sub: argparse._SubParsersAction) -> None:
    d = add_command(sub, "demo")
    d.add_argument("--data", default=None, help="corpus with an answers.text field (default: "
                   "the 1,000 ELI5 records in assets/)")
    d.add_argument("--output", default="runs/demo", help="where the adapted model goes "
                   "(default: runs/demo; replaced if an earlier demo wrote it)")
    d.add_argument("--quiet", action="store_true", help="no progress bars")


def run(ns: argparse.Namespace, argv: list[str]) -> int:
    from mlmkit.demo import default_demo_data, run_demo

    run_demo(ns.data or default_demo_data(), ns.output, quiet=ns.quiet)
    return 0
