"""`mlmkit score`: the library's records from texts, files and stdin, options anywhere, bad
lines reported by number while the rest are scored, and n-best lists re-ranked."""

from __future__ import annotations

import io
import json

import pytest

from mlmkit.cli.main import main
from mlmkit.inference.score import Scorer

TEXTS = ["The Milky Way is a spiral galaxy.", "Galaxy spiral a is Way Milky the."]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def scorer(tiny_bert):
    return Scorer(str(tiny_bert), device="cpu")


def test_texts_after_options_are_scored_as_the_library_does(capsys, tiny_bert, scorer):
    code, out, _ = run(capsys, "score", tiny_bert, "--metric", "word-l2r", "--json", *TEXTS)
    assert code == 0
    got = [json.loads(line) for line in out.splitlines()]
    assert got == scorer(TEXTS, metric="word-l2r")
    code, out, _ = run(capsys, "score", tiny_bert, TEXTS[0], "--device", "cpu", TEXTS[1])
    assert code == 0
    lines = out.splitlines()[1:]  # under the table's header
    assert [ln.split(None, 2)[2] for ln in lines] == TEXTS
    assert float(lines[0].split()[0]) == pytest.approx(scorer(TEXTS[0])["pll"], abs=1e-3)


def test_the_table_has_one_header_over_its_columns(capsys, tiny_bert, scorer):
    code, out, _ = run(capsys, "score", tiny_bert, *TEXTS)
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split() == ["PLL", "pseudo-PPL", "text"] and len(rows) == len(TEXTS)
    for row, text in zip(rows, TEXTS):
        pll, pppl, rest = row.split(None, 2)
        assert rest == text and float(pll) == pytest.approx(scorer(text)["pll"], abs=1e-3)
        # right-aligned numbers under their names, the text under "text"
        assert header.index("PLL") + 3 == row.index(pll) + len(pll)
        assert header.index("pseudo-PPL") + 10 == row.index(pppl) + len(pppl)
        assert header.index("text") == row.index(text)
    code, out, _ = run(capsys, "score", tiny_bert, "--json", *TEXTS)
    assert [json.loads(line)["text"] for line in out.splitlines()] == TEXTS  # no header


def test_bad_lines_are_numbered_and_the_rest_scored(capsys, tmp_path, tiny_bert, scorer):
    src = tmp_path / "in.jsonl"
    src.write_bytes(b'{"text": "' + TEXTS[0].encode() + b'"}\n\n{"text": 5}\n\xff\n'
                    b'{"text": ""}\n{"text": "' + TEXTS[1].encode() + b'"}\n')
    out = tmp_path / "out.jsonl"
    code, _, err = run(capsys, "score", tiny_bert, "--input", src, "--output", out, "--quiet",
                       "--per-token")
    assert code == 1
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(recs) == 5
    assert recs[0] == scorer(TEXTS[0], per_token=True)
    assert recs[4] == scorer(TEXTS[1], per_token=True)
    assert [r.get("line") for r in recs[1:4]] == [3, 4, 5]
    assert "not a string but int" in recs[1]["error"]
    assert "not UTF-8" in recs[2]["error"] and "no tokens to score" in recs[3]["error"]
    assert err.strip().endswith("3 of 5 lines could not be scored; 1 blank line skipped")


def test_stdin(capsys, monkeypatch, tiny_bert, scorer):
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(
        ("\n".join(TEXTS) + "\n").encode())))
    code, out, _ = run(capsys, "score", tiny_bert, "--json")
    assert code == 0
    assert [json.loads(line)["pll"] for line in out.splitlines()] == pytest.approx(
        [r["pll"] for r in scorer(TEXTS)], abs=1e-9)


def test_rescore_ranks_by_prior_plus_weighted_pll(capsys, tmp_path, tiny_bert, scorer):
    nbest = tmp_path / "nbest.jsonl"
    pll = {t: scorer(t)["pll"] for t in TEXTS}
    good, bad = sorted(TEXTS, key=lambda t: -pll[t])  # by this (random) model's PLL
    # The prior prefers the bad candidate by a margin the PLL must overturn at weight 1 only.
    margin = (pll[good] - pll[bad]) / 2
    assert margin > 0
    lines = [{"id": "u1", "candidates": [{"text": bad, "score": margin, "am": 7},
                                         {"text": good, "score": 0.0}]},
             {"id": "u2", "candidates": [{"text": good, "score": "x"}]},
             {"id": "u3", "candidates": [bad, good]}]
    nbest.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    for weight, best in ((1.0, good), (0.1, bad)):
        code, out, err = run(capsys, "score", tiny_bert, "--rescore", "--input", nbest,
                             "--weight", weight)
        assert code == 1 and "1 of 3 lines could not be rescored" in err
        recs = [json.loads(line) for line in out.splitlines()]
        assert recs[0]["id"] == "u1" and recs[0]["best"] == best
        totals = [c["total"] for c in recs[0]["candidates"]]
        assert totals == sorted(totals, reverse=True)
        first = {c["text"]: c for c in recs[0]["candidates"]}
        assert first[bad]["am"] == 7  # the record's own fields are kept
        assert first[bad]["total"] == pytest.approx(margin + weight * pll[bad], abs=1e-4)
        assert recs[1] == {"line": 2, "error": f"{nbest}: line 2: candidates[0].score: 'x'; "
                           "expected a finite number (the prior score, e.g. the acoustic or "
                           "translation model's)"}
        assert recs[2]["best"] == good and recs[2]["candidates"][0]["score"] == 0.0


def test_unknown_metric_is_one_line_before_loading(capsys, tmp_path):
    code, out, err = run(capsys, "score", tmp_path, "--metric", "l2r", "a b")
    assert code == 2 and out == ""
    assert err.strip() == ("error: metric 'l2r': expected one of original, word-l2r, "
                           "whole-word")


def test_one_dtype_flag_picks_int8_for_score_and_fill(capsys, tiny_bert):
    """`--dtype int8` gives the int8 engine's own records from both commands."""
    from mlmkit import FillMask

    code, out, _ = run(capsys, "score", tiny_bert, "--dtype", "int8", "--json", *TEXTS)
    assert code == 0
    int8 = Scorer(str(tiny_bert), device="cpu", dtype="int8")
    assert [json.loads(line) for line in out.splitlines()] == int8(TEXTS)
    assert int8(TEXTS) != Scorer(str(tiny_bert), device="cpu")(TEXTS)  # a real change
    code, out, _ = run(capsys, "fill", tiny_bert, "--dtype", "int8", "--json", "A [MASK] day.")
    assert code == 0
    assert json.loads(out) == FillMask(str(tiny_bert), device="cpu", dtype="int8")(
        "A [MASK] day.")
