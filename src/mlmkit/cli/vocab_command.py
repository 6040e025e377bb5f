"""`mlmkit vocab audit|extend`: how well a tokenizer covers a corpus, and adding whole words."""

from __future__ import annotations

import argparse
import json

from mlmkit.cli.flags import add_command, add_model_argument


def register(sub: argparse._SubParsersAction) -> None:
    v = add_command(sub, "vocab").add_subparsers(dest="vocab_command", required=True)
    for name, what in (("audit", "tokens per word and the costliest words"),
                       ("extend", "add the costliest words as whole-word tokens")):
        c = v.add_parser(name, help=what, description=what)
        add_model_argument(c)
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


def run(ns: argparse.Namespace, argv: list[str]) -> int:
    from mlmkit.vocab.audit import audit_vocab, format_audit
    from mlmkit.vocab.extend import extend_vocab

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
