"""`mlmkit push`: publish a finished run's directory to the Hugging Face Hub."""

from __future__ import annotations

import argparse

from mlmkit.cli.flags import add_command


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "push")
    p.add_argument("run", metavar="RUN", help="the run's directory (what `mlmkit train` wrote)")
    p.add_argument("repo_id", metavar="REPO_ID", help="the Hub model repository, NAME or "
                   "OWNER/NAME (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repository private (an "
                   "existing public one is refused)")
    p.add_argument("--revision", metavar="BRANCH", default=None, help="commit to this branch "
                   "(created from main if missing; default: main)")
    p.add_argument("--message", metavar="TEXT", default=None, help="the commit message "
                   "(default: 'mlmkit: RUN (N steps, perplexity A -> B)')")


def run(ns: argparse.Namespace, argv: list[str]) -> int:
    from mlmkit.training.export import push

    url = push(ns.run, ns.repo_id, private=ns.private, revision=ns.revision,
               message=ns.message)
    print(f"published {ns.run} to {ns.repo_id}: {url}")
    return 0
