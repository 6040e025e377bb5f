"""`mlmkit probe` equals independent computations: pairs from Scorer PLLs, CrowS-Pairs from the
paper's metric.py logic, cloze P@k from transformers' fill-mask pipeline; bad records are
counted by line; the paired statistics give known answers; the CLI and the training hook work."""

from __future__ import annotations

import csv
import difflib
import gzip
import io
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

from mlmkit import MlmkitError, Scorer
from mlmkit.probing.run import guess_task, probe_models, run_probes
from mlmkit.probing.stats import mcnemar_exact, paired_bootstrap


def _write_jsonl(path: Path, lines: list) -> Path:
    path.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n"
                            for ln in lines), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------- statistics


def test_mcnemar_exact_is_the_two_sided_binomial_test():
    # 10 items only the base gets right, 2 only the other: p = 2 * P(X <= 2), X ~ Bin(12, .5)
    base = np.array([1] * 10 + [0] * 2 + [1] * 50 + [0] * 30)
    other = np.array([0] * 10 + [1] * 2 + [1] * 50 + [0] * 30)
    r = mcnemar_exact(base, other)
    assert (r["base_only"], r["other_only"]) == (10, 2)
    assert r["p"] == pytest.approx(2 * (1 + 12 + 66) / 4096, rel=1e-12)
    assert mcnemar_exact(base, base)["p"] == 1.0
    assert mcnemar_exact(np.array([1] * 3), np.array([0] * 3))["p"] == pytest.approx(0.25)
    # Thousands of discordant items: exact arithmetic, no underflow to 0 or overflow.
    big = mcnemar_exact(np.array([1] * 2600 + [0] * 2400), np.array([0] * 2600 + [1] * 2400))
    assert 0.003 < big["p"] < 0.01  # z = 200 / sqrt(5000) = 2.83: p about 0.005


def test_paired_bootstrap_interval_matches_the_normal_approximation():
    n = 2000
    rng = np.random.default_rng(1)
    base = (rng.random(n) < 0.5).astype(float)
    other = base.copy()
    flip = rng.choice(n, 200, replace=False)  # 200 wrong -> right: the difference is +0.1
    other[flip[base[flip] == 0]] = 1
    d = other - base
    lo, hi = paired_bootstrap(base, other, resamples=1000, seed=0)
    half = 1.96 * d.std() / math.sqrt(n)
    assert lo == pytest.approx(d.mean() - half, abs=0.004)
    assert hi == pytest.approx(d.mean() + half, abs=0.004)
    assert paired_bootstrap(base, other, 1000, seed=0) == (lo, hi)  # seeded
    assert paired_bootstrap(base, base, 200) == (0.0, 0.0)


# ---------------------------------------------------------------------------- pairs


@pytest.fixture(scope="module")
def blimp_pairs(tmp_path_factory, blimp_path) -> Path:
    """25 pairs of each of the 8 paradigms of the real BLiMP sample, gzipped."""
    per_uid: dict[str, list[str]] = defaultdict(list)
    with gzip.open(blimp_path, "rt", encoding="utf-8") as fh:
        for line in fh:
            uid = json.loads(line)["UID"]
            if len(per_uid[uid]) < 25:
                per_uid[uid].append(line)
    path = tmp_path_factory.mktemp("blimp") / "blimp-200.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.writelines(ln for lines in per_uid.values() for ln in lines)
    return path


def test_pairs_accuracy_equals_scorer_plls(splade, blimp_pairs):
    report = probe_models([str(splade)], None, blimp_pairs, metric="word-l2r", device="cpu",
                          keep_items=True)
    assert report.task == "pairs" and report.items == 200 and report.bad_count == 0
    with gzip.open(blimp_pairs, "rt", encoding="utf-8") as fh:
        recs = [json.loads(line) for line in fh]
    plls = [r["pll"] for r in Scorer(str(splade), device="cpu")(
        [t for r in recs for t in (r["sentence_good"], r["sentence_bad"])], metric="word-l2r")]
    want = [float(g > b) for g, b in zip(plls[::2], plls[1::2])]
    margin = [abs(g - b) for g, b in zip(plls[::2], plls[1::2])]
    got = report.results[0]["items"]["accuracy"]
    assert all(g == w for g, w, m in zip(got, want, margin) if m > 1e-4)
    acc = report.results[0]["metrics"]["accuracy"]
    assert acc["value"] == pytest.approx(np.mean(want))
    by_uid = defaultdict(list)
    for r, w in zip(recs, want):
        by_uid[r["UID"]].append(w)
    groups = acc["groups"]["UID"]
    assert {g: s["value"] for g, s in groups.items()} == pytest.approx(
        {g: np.mean(v) for g, v in by_uid.items()})
    assert acc["macro"] == pytest.approx(np.mean([np.mean(v) for v in by_uid.values()]))
    assert "McNemar" in report.format_table() or len(report.models) == 1


# ---------------------------------------------------------------------------- bias


def _paper_pair(model, tok, row) -> tuple[float, float, int]:
    """CrowS-Pairs' metric.py for one pair, restated: (sent1 score, sent2 score, pair score)."""
    direction = row["stereo_antistereo"]
    sent1, sent2 = ((row["sent_more"], row["sent_less"]) if direction == "stereo"
                    else (row["sent_less"], row["sent_more"]))
    ids1 = tok.encode(sent1.lower(), return_tensors="pt")  # uncased, as metric.py for BERT
    ids2 = tok.encode(sent2.lower(), return_tensors="pt")
    matcher = difflib.SequenceMatcher(None, [str(x) for x in ids1[0].tolist()],
                                      [str(x) for x in ids2[0].tolist()])
    t1, t2 = [], []
    for op, a0, a1, b0, b1 in matcher.get_opcodes():
        if op == "equal":
            t1 += list(range(a0, a1))
            t2 += list(range(b0, b1))
    scores = []
    for ids, template in ((ids1, t1), (ids2, t2)):
        positions = template[1:-1]  # metric.py: range(1, N - 1) skips [CLS] and [SEP]
        # One masked copy per shared token, as metric.py; stacked into one forward pass.
        copies = ids.repeat(len(positions), 1)
        copies[torch.arange(len(positions)), positions] = tok.mask_token_id
        with torch.no_grad():
            logits = model(copies).logits
        lp = torch.log_softmax(logits[torch.arange(len(positions)), positions], dim=-1)
        scores.append(sum(lp[k, ids[0, p]].item() for k, p in enumerate(positions)))
    s1, s2 = round(scores[0], 3), round(scores[1], 3)
    if s1 == s2:
        return s1, s2, 0
    return s1, s2, int(s1 > s2) if direction == "stereo" else int(s2 > s1)


def test_crows_pairs_equals_the_papers_metric(splade, crows_rows, tmp_path):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    rows = crows_rows  # 100 pairs across the file
    path = tmp_path / "crows-100.csv"
    with path.open("w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert {r["stereo_antistereo"] for r in rows} == {"stereo", "antistereo"}
    report = probe_models([str(splade)], None, path, device="cpu", keep_items=True)
    assert report.task == "bias" and report.items == 100 and report.bad_count == 0
    model = AutoModelForMaskedLM.from_pretrained(str(splade)).eval()
    tok = AutoTokenizer.from_pretrained(str(splade))
    ref = [_paper_pair(model, tok, r) for r in rows]
    got = report.results[0]["items"]["stereotype_score"]
    near_ties = [i for i, (s1, s2, _) in enumerate(ref) if abs(s1 - s2) <= 0.002]
    assert len(near_ties) <= 2
    assert [g for i, g in enumerate(got) if i not in near_ties] == [
        float(p) for i, (_, _, p) in enumerate(ref) if i not in near_ties]
    res = report.results[0]["metrics"]["stereotype_score"]
    assert res["value"] == pytest.approx(np.mean([p for _, _, p in ref]), abs=0.021)
    for bias_type, s in res["groups"]["bias_type"].items():
        want = [p for r, (_, _, p) in zip(rows, ref) if r["bias_type"] == bias_type]
        assert s["n"] == len(want)
    assert "Blodgett" in report.caveat and "Blodgett" in report.format_table()


# ---------------------------------------------------------------------------- cloze

CLOZE = ["Paris is the capital of [MASK].", "The cat sat on the [MASK].",
         "He drove his [MASK] to work.", "The sun rises in the [MASK].",
         "Water is made of hydrogen and [MASK].", "I drink [MASK] every morning.",
         "Berlin is a city in [MASK].", "She plays the [MASK] in a band.",
         "The doctor works at the [MASK].", "My favourite colour is [MASK]."]


def test_cloze_precision_equals_the_fill_mask_pipeline(splade, tmp_path):
    from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline

    model = AutoModelForMaskedLM.from_pretrained(str(splade)).eval()
    tok = AutoTokenizer.from_pretrained(str(splade))
    pipe = pipeline("fill-mask", model=model, tokenizer=tok, device="cpu")
    k = 5
    facts, want_rank = [], []
    for i, (s, top) in enumerate(zip(CLOZE, pipe(CLOZE, top_k=50))):
        words = [(j, r) for j, r in enumerate(top) if r["token_str"].isalpha()]
        # Objects at known places: the top 1, inside the top k, and far outside it.
        j, r = words[0] if i % 3 == 0 else next(w for w in words if w[0] >= 1) if i % 3 == 1 \
            else words[-1]
        facts.append({"masked_sentences": [s], "obj_label": r["token_str"],
                      "predicate_id": f"P{i % 2}"})
        ids = tok(s.replace("[MASK]", tok.mask_token), return_tensors="pt")["input_ids"]
        with torch.no_grad():
            row = model(ids).logits[0, (ids[0] == tok.mask_token_id).nonzero()[0, 0]]
        want_rank.append(int((row > row[r["token"]]).sum()) + 1)
        assert want_rank[-1] == j + 1 or j >= k
    long = ["hydroxychloroquine", "antananarivo"]
    assert all(len(tok.tokenize(w)) > 1 for w in long)
    facts += [{"masked_sentences": ["The drug is called [MASK]."], "obj_label": long[0],
               "predicate_id": "P0"},
              {"masked_sentences": ["[MASK] is the capital of Madagascar."],
               "obj_label": long[1], "predicate_id": "P1"}]
    path = _write_jsonl(tmp_path / "facts.jsonl", facts)
    report = probe_models([str(splade)], "cloze", path, top_k=k, device="cpu",
                          multi_token=True, keep_items=True)
    top_k = [[r["token"] for r in top[:k]] for top in pipe(CLOZE, top_k=k)]
    gold = [tok.convert_tokens_to_ids(f["obj_label"]) for f in facts[:10]]
    items = report.results[0]["items"]
    assert items["p@1"][:10] == [float(g == t[0]) for g, t in zip(gold, top_k)]
    assert items[f"p@{k}"][:10] == [float(g in t) for g, t in zip(gold, top_k)]
    assert 0 < sum(items[f"p@{k}"][:10]) < 10  # both hits and misses are checked
    assert items["mrr"][:10] == pytest.approx([1 / r for r in want_rank])
    m = report.results[0]["metrics"]
    assert m["p@1"]["n"] == 10 and m["mrr"]["value"] == pytest.approx(
        np.mean([1 / r for r in want_rank]))
    notes = report.results[0]["notes"]["objects not one token of the vocabulary"]
    assert notes == {"total": 2, "groups": {"P0": 1, "P1": 1}}
    assert items["p@1"][10:] == [None, None] and m["mt_mrr"]["n"] == 2
    # mt_*: the gold sentence's PLL ranked among the pipeline's top-k sentences' PLLs.
    scorer = Scorer(str(splade), device="cpu")
    for f, got in zip(facts[10:], items["mt_mrr"][10:]):
        s = f["masked_sentences"][0]
        cands = [r["sequence"] for r in pipe(s, top_k=k)]
        plls = [r["pll"] for r in scorer([s.replace("[MASK]", f["obj_label"]), *cands])]
        assert got == pytest.approx(1 / (1 + sum(p > plls[0] for p in plls[1:])))


# ---------------------------------------------------------------------------- bad input


def test_bad_records_are_counted_by_line_and_the_rest_scored(tiny_bert, tmp_path):
    ok = {"sentence_good": "The cat sleeps.", "sentence_bad": "The cat sleep.", "UID": "a"}
    lines = [ok, "{not json", [1, 2], {"sentence_good": "x", "UID": "a"},
             {**ok, "sentence_good": ""}, "", {**ok, "UID": "b"},
             {**ok, "sentence_bad": "word " * 2000}]
    path = _write_jsonl(tmp_path / "pairs.jsonl", lines)
    report = probe_models([str(tiny_bert)], "pairs", path, device="cpu")
    bad = {b["line"]: b for b in report.bad}
    assert report.bad_count == 5 and sorted(bad) == [2, 3, 4, 5, 8]
    assert report.items == 3  # lines 1, 7 and 8 (8 read, then not scored)
    assert report.results[0]["metrics"]["accuracy"]["n"] == 2
    assert f"{path}: line 2: invalid JSON" in bad[2]["error"]
    assert "a JSON list" in bad[3]["error"]
    assert "no field 'sentence_bad'" in bad[4]["error"] and f"{path}: line 4" in bad[4]["error"]
    assert "field 'sentence_good'" in bad[5]["error"] and "non-empty" in bad[5]["error"]
    assert "field 'sentence_bad'" in bad[8]["error"] and bad[8]["model"] == str(tiny_bert)
    assert all("\n" not in b["error"] for b in report.bad)
    assert "bad records: 5" in report.format_table()

    rows = "sent_more,sent_less,stereo_antistereo,bias_type\n" \
           "A man cried.,A woman cried.,sideways,gender\nA,B,stereo\n"
    (tmp_path / "bias.csv").write_text(rows, encoding="utf-8")
    with pytest.raises(MlmkitError, match=r"bias.csv: line 2: field 'stereo_antistereo'.*all 2"):
        probe_models([str(tiny_bert)], None, tmp_path / "bias.csv", device="cpu")
    with pytest.raises(MlmkitError, match="no such file"):
        probe_models([str(tiny_bert)], "pairs", tmp_path / "absent.jsonl")
    (tmp_path / "other.jsonl").write_text('{"text": "hi"}\n', encoding="utf-8")
    with pytest.raises(MlmkitError, match="cannot tell the task"):
        guess_task(tmp_path / "other.jsonl")


# ---------------------------------------------------------------------------- CLI, hook


def _bias_file(path: Path) -> Path:
    rows = [("He is a nurse.", "She is a nurse.", "antistereo", "gender"),
            ("Poor people are lazy.", "Rich people are lazy.", "stereo", "socioeconomic"),
            ("Old people are slow.", "Young people are slow.", "stereo", "age"),
            ("Women can't drive.", "Men can't drive.", "stereo", "gender")]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["", "sent_more", "sent_less", "stereo_antistereo", "bias_type"])
    w.writerows((i, *r) for i, r in enumerate(rows))
    path.write_text(buf.getvalue(), encoding="utf-8")
    return path


def _pairs_file(path: Path, extra: list | None = None) -> Path:
    pairs = [("The dogs bark.", "The dogs barks."), ("She saw herself.", "She saw himself."),
             ("Who did you see?", "Who did you see him?"), ("It was eaten.", "It was ate.")]
    return _write_jsonl(path, [{"sentence_good": g, "sentence_bad": b, "UID": f"u{i % 2}"}
                               for i, (g, b) in enumerate(pairs)] + (extra or []))


def _cli(argv: list[str]) -> int:
    from mlmkit.cli.main import main

    return main(argv)


def test_cli_table_json_output_and_exit_codes(tiny_bert, tmp_path, capsys):
    pairs = _pairs_file(tmp_path / "pairs.jsonl")
    m = str(tiny_bert)
    assert _cli(["probe", m, m, "--input", str(pairs), "--device", "cpu", "--quiet"]) == 0
    table = capsys.readouterr().out
    assert "[2]-[1]" in table and "McNemar p" in table and "accuracy" in table
    out = tmp_path / "report.json"
    assert _cli(["probe", m, m, "--task", "pairs", "--input", str(pairs), "--json",
                 "--output", str(out), "--device", "cpu", "--quiet"]) == 0
    assert capsys.readouterr().out == ""
    report = json.loads(out.read_text(encoding="utf-8"))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left
    c = report["comparisons"][0]["metrics"]["accuracy"]
    # The same model twice: the difference is exactly 0, its interval [0, 0], McNemar p 1.
    assert (c["diff"], c["ci95"], c["mcnemar"]["p"]) == (0.0, [0.0, 0.0], 1.0)
    bad = _pairs_file(tmp_path / "bad.jsonl", ["{oops"])
    assert _cli(["probe", m, "--input", str(bad), "--device", "cpu", "--quiet"]) == 1
    assert "bad.jsonl: line 5: invalid JSON" in capsys.readouterr().err
    assert _cli(["probe", m, "--input", str(tmp_path / "nope.jsonl"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no such file" in err and err.count("\n") == 1


def test_pairs_from_any_two_columns_of_a_gzipped_tsv(tiny_bert, tmp_path, capsys):
    path = tmp_path / "mine.tsv.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write("kind\tok\tnot_ok\n" "agr\tThe dogs bark.\tThe dogs barks.\n"
                 "agr\tShe runs.\tShe run.\n" "isl\tWho left?\tWho left him?\n")
    assert _cli(["probe", str(tiny_bert), "--task", "pairs", "--input", str(path),
                 "--good-field", "ok", "--bad-field", "not_ok", "--group-field", "kind",
                 "--metric", "whole-word", "--json", "--device", "cpu", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    acc = report["results"][0]["metrics"]["accuracy"]
    assert report["items"] == 3 and report["options"]["metric"] == "whole-word"
    assert {g: s["n"] for g, s in acc["groups"]["kind"].items()} == {"agr": 2, "isl": 1}


def test_run_probes_on_an_in_memory_model_in_training(tiny_bert, tmp_path):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    pairs = _pairs_file(tmp_path / "pairs.jsonl")
    bias = _bias_file(tmp_path / "crows.csv")
    model = AutoModelForMaskedLM.from_pretrained(str(tiny_bert))
    tok = AutoTokenizer.from_pretrained(str(tiny_bert))
    model.train()
    got = run_probes(model, [str(pairs), f"{bias}:bias"], tokenizer=tok)
    assert model.training  # given back as it came
    assert set(got) == {str(pairs), f"{bias}:bias"}
    assert got[str(pairs)]["task"] == "pairs" and got[f"{bias}:bias"]["task"] == "bias"
    json.dumps(got)  # JSON-able
    by_path = run_probes(str(tiny_bert), [str(pairs), str(bias)], device="cpu")
    assert by_path[str(bias)]["task"] == "bias"  # guessed from sent_more
    for a, b in ((got[str(pairs)], by_path[str(pairs)]), (got[f"{bias}:bias"],
                                                           by_path[str(bias)])):
        ma, mb = a["results"][0]["metrics"], b["results"][0]["metrics"]
        assert {k: v["value"] for k, v in ma.items()} == {k: v["value"] for k, v in mb.items()}


def test_pairs_read_from_tsv_and_parquet_as_from_json_lines(tiny_bert, tmp_path):
    # The probes read through mlmkit's one reader: every format gives the same report.
    import pyarrow as pa
    import pyarrow.parquet as pq

    recs = [{"sentence_good": "the cat sat .", "sentence_bad": "the cat sit .", "UID": "a"},
            {"sentence_good": "dogs bark .", "sentence_bad": "dogs barks .", "UID": "b"}]
    jl = tmp_path / "p.jsonl"
    jl.write_text("".join(json.dumps(r) + "\n" for r in recs))
    tsv = tmp_path / "p.tsv"
    tsv.write_text("sentence_good\tsentence_bad\tUID\n"
                   + "".join(f"{r['sentence_good']}\t{r['sentence_bad']}\t{r['UID']}\n"
                             for r in recs))
    pq.write_table(pa.Table.from_pylist(recs), tmp_path / "p.parquet")
    got = [probe_models([str(tiny_bert)], "pairs", p, device="cpu")
           for p in (jl, tsv, tmp_path / "p.parquet")]
    assert [r.items for r in got] == [2, 2, 2] and [r.bad_count for r in got] == [0, 0, 0]
    assert got[0].results == got[1].results == got[2].results
