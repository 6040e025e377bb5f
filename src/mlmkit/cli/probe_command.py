"""`mlmkit probe`: the command's flags and what it prints; the work is `probe_models`'s."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mlmkit.cli.flags import add_command, add_model_argument, add_settings_flags, settings_from
from mlmkit.config import EngineConfig
from mlmkit.errors import MlmkitError
from mlmkit.io.files import atomic_write


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "probe")
    add_model_argument(p, "many", help="Hub ids or local model directories; the first is the "
                       "base the others are compared with")
    p.add_argument("--task", choices=("pairs", "cloze", "bias"), default=None,
                   help="default: guessed from the first record's fields (sentence_good: "
                   "pairs, masked_sentences: cloze, sent_more: bias)")
    p.add_argument("--input", required=True, metavar="FILE", help="JSON lines, CSV or TSV, "
                   "gzipped or not")
    p.add_argument("--metric", default="original", help="PLL metric of pairs (and of cloze's "
                   "--multi-token): original, word-l2r or whole-word (default: original)")
    p.add_argument("--group-field", default=None, help="field to group results by (default: "
                   "UID for pairs, bias_type for bias)")
    p.add_argument("--good-field", default="sentence_good", help="pairs: the field of the "
                   "sentence that should score higher (default: sentence_good)")
    p.add_argument("--bad-field", default="sentence_bad", help="pairs: the field of the "
                   "sentence that should score lower (default: sentence_bad)")
    p.add_argument("--top-k", type=int, default=10, help="cloze: k of P@k, 1 or more "
                   "(default: 10)")
    p.add_argument("--relation-field", default="predicate_id", help="cloze: the field to "
                   "group facts by (default: predicate_id)")
    p.add_argument("--multi-token", action="store_true", help="cloze: also rank objects of "
                   "several tokens, by PLL against the top-k single tokens")
    p.add_argument("--limit", type=int, default=None, help="read only the first N records")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("--output", metavar="FILE", help="write the table (or JSON) here instead "
                   "of stdout, atomically")
    add_settings_flags(p, EngineConfig, only=("device", "dtype", "max_tokens", "quiet"),
                       run_mlm=False)


def run(ns: argparse.Namespace, argv: list[str]) -> int:
    """Run `mlmkit probe` from parsed flags: the table (or JSON) to stdout or --output.
    Exit status 0; 1 when some records were bad (counted and listed, the rest scored); 2 on an
    error, said in one line."""
    from mlmkit.probing.run import probe_models

    engine = settings_from(EngineConfig, ns)
    out = Path(ns.output) if ns.output else None
    if out is not None and not out.parent.is_dir():
        raise MlmkitError(f"--output {out}: no directory {out.parent}")
    report = probe_models(
        ns.models, ns.task, ns.input, metric=ns.metric, group_field=ns.group_field,
        good_field=ns.good_field, bad_field=ns.bad_field, top_k=ns.top_k,
        relation_field=ns.relation_field, multi_token=ns.multi_token, limit=ns.limit,
        device=engine.device, dtype=engine.dtype, max_tokens=engine.max_tokens,
        progress=not engine.quiet and sys.stderr.isatty())
    text = (json.dumps(report.to_dict(), indent=2) if ns.json else report.format_table()) + "\n"
    if out is None:
        sys.stdout.write(text)
    else:
        atomic_write(out, text)
    if report.bad_count:
        print(f"mlmkit probe: {report.bad_count} bad record(s) counted and not scored; the "
              f"first: {report.bad[0]['error']}", file=sys.stderr)
        return 1
    return 0
