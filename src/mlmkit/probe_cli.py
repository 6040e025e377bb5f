"""`mlmkit probe`: the command's flags and what it prints; the work is `probe_models`'s."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from . import MlmkitError

_DESCRIPTION = """\
Probe masked LMs on minimal pairs (BLiMP), cloze facts (LAMA) or bias pairs (CrowS-Pairs).
With several models, model 1 is the base: the others' differences from it come with a paired
bootstrap 95% interval and McNemar's exact p, so a change can be told from noise."""

_EXAMPLES = """\
examples:
  mlmkit probe bert-base-uncased --task pairs --input blimp.jsonl.gz
  mlmkit probe base/ tuned/ --task bias --input crows_pairs_anonymized.csv --json
  mlmkit probe base/ --task cloze --input TREx/P19.jsonl --top-k 10 --multi-token"""


def add_probe_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `probe` command to `subparsers` (argparse's add_subparsers) and return it."""
    p = subparsers.add_parser("probe", help="minimal pairs, cloze facts and bias pairs, base vs "
                              "tuned", description=_DESCRIPTION, epilog=_EXAMPLES,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", metavar="MODEL", help="Hub ids or local model "
                   "directories; the first is the base the others are compared with")
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
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps or auto")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    p.add_argument("--max-tokens", type=int, default=None, help="most tokens per forward "
                   "pass, counted after padding; bounds memory")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _write_atomic(path: Path, text: str) -> None:
    """All of `text` at `path` or nothing: a reader never sees half a report."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def run_probe_command(ns: argparse.Namespace) -> int:
    """Run `mlmkit probe` from parsed flags: the table (or JSON) to stdout or --output.
    Exit status 0; 1 when some records were bad (counted and listed, the rest scored); 2 on an
    error, said in one line."""
    from .probe import probe_models

    out = Path(ns.output) if ns.output else None
    try:
        if out is not None and not out.parent.is_dir():
            raise MlmkitError(f"--output {out}: no directory {out.parent}")
        report = probe_models(
            ns.models, ns.task, ns.input, metric=ns.metric, group_field=ns.group_field,
            good_field=ns.good_field, bad_field=ns.bad_field, top_k=ns.top_k,
            relation_field=ns.relation_field, multi_token=ns.multi_token, limit=ns.limit,
            device=ns.device, dtype=ns.dtype, max_tokens=ns.max_tokens,
            progress=not ns.quiet and sys.stderr.isatty())
    except MlmkitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = (json.dumps(report.to_dict(), indent=2) if ns.json else report.format_table()) + "\n"
    if out is None:
        sys.stdout.write(text)
    else:
        _write_atomic(out, text)
    if report.bad_count:
        print(f"mlmkit probe: {report.bad_count} bad record(s) counted and not scored; the "
              f"first: {report.bad[0]['error']}", file=sys.stderr)
        return 1
    return 0
