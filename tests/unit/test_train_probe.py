"""`train --probe`: the base and the trained model probed as `probe_models` probes them (same
numbers, same paired difference), a table in the card, a bad probe file refused before any
training output, and a resume that does not probe the base again."""

from __future__ import annotations

import gzip
import json
from itertools import islice
from pathlib import Path

import pytest

from mlmkit import MlmkitError, TrainConfig, train
from mlmkit.cli.main import main
from mlmkit.probing import run as probe_run
from mlmkit.probing.run import probe_models


def small_cfg(model, data, out, **kw) -> TrainConfig:
    base = dict(model=str(model), data=str(data), text_field=["answers.text"], limit=100,
                block_size=64, output=str(out), max_steps=4, batch_size=8, eval_batch_size=32,
                learning_rate=1e-3, log_every=1)
    return TrainConfig(**{**base, **kw})


def _write(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n"
                            for r in records), encoding="utf-8")
    return path


@pytest.fixture
def probe_files(tmp_path, blimp_path) -> dict[str, Path]:
    """40 real BLiMP pairs, and cloze facts whose MRR moves with any training."""
    with gzip.open(blimp_path, "rt", encoding="utf-8") as fh:
        pairs = [json.loads(line) for line in islice(fh, 40)]
    words = ["the", "a", "to", "of", "and", "is", "it", "that"]
    facts = [{"masked_sentences": [f"It is {w} [MASK] of the thing.", f"[MASK] {w} was."],
              "obj_label": o, "predicate_id": f"P{i % 2}"}
             for i, (w, o) in enumerate(zip(words, reversed(words)))]
    return {"pairs": _write(tmp_path / "blimp40.jsonl", pairs),
            "cloze": _write(tmp_path / "facts.jsonl", facts)}


def test_metrics_hold_base_and_tuned_as_probe_models_computes_them(tiny_roberta, sample_path,
                                                                   probe_files, tmp_path):
    out = tmp_path / "run"
    pairs, cloze = probe_files["pairs"], probe_files["cloze"]
    r = train(small_cfg(tiny_roberta, sample_path, out, probe=[str(pairs), f"{cloze}:cloze"]))
    section = json.loads((out / "metrics.json").read_text(encoding="utf-8"))["probe"]
    assert section == r.probes
    assert list(section) == [f"{pairs}:pairs", f"{cloze}:cloze"]
    for task, path in (("pairs", pairs), ("cloze", cloze)):
        got = section[f"{path}:{task}"]
        assert (got["task"], got["file"]) == (task, str(path))
        both = probe_models([str(tiny_roberta), str(out)], task, path, device="cpu")
        assert got["base"]["results"][0]["metrics"] == both.results[0]["metrics"]
        assert got["tuned"]["results"][0]["metrics"] == both.results[1]["metrics"]
        assert got["difference"] == both.comparisons[0]["metrics"]
        assert got["base"]["models"] == [str(tiny_roberta)] and got["tuned"]["models"] == [
            str(out)]
        assert "items" not in got["base"]["results"][0]
    # The base was probed before training: training moved the cloze MRR.
    mrr = section[f"{cloze}:cloze"]["difference"]["mrr"]
    assert mrr["diff"] != 0 and mrr["ci95"][0] <= mrr["diff"] <= mrr["ci95"][1]

    card = (out / "README.md").read_text(encoding="utf-8")
    assert "### Probes" in card
    assert "| Task | File | Metric | Base | Tuned | Difference (95% CI) | McNemar p |" in card
    acc = section[f"{pairs}:pairs"]["tuned"]["results"][0]["metrics"]["accuracy"]["value"]
    assert f"| pairs | {pairs} | accuracy |" in card and f"{100 * acc:.1f}%" in card
    lo, hi = mrr["ci95"]
    assert f"| cloze | {cloze} | mrr |" in card and f"{mrr['diff']:+.3f} [{lo:+.3f}, {hi:+.3f}]" \
        in card


def test_a_bad_probe_file_fails_before_any_training_output(tiny_roberta, sample_path,
                                                          probe_files, tmp_path, capsys):
    good = probe_files["pairs"]
    bad = _write(tmp_path / "bad.jsonl", [json.loads(line) for line in
                                          good.read_text().splitlines()[:2]] + ["{oops"])
    out = tmp_path / "run"
    args = ["train", "--model", str(tiny_roberta), "--data", str(sample_path), "--text-field",
            "answers.text", "--limit", "100", "--block-size", "64", "--output", str(out),
            "--max-steps", "2", "--quiet", "--probe", str(good), "--probe", str(bad)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"--probe '{bad}'" in err and f"{bad}: line 3: invalid JSON" in err
    assert not out.exists()  # no checkpoint, nothing written
    # Missing files and unknown task names are refused when the settings are made.
    with pytest.raises(MlmkitError, match=r"probe='nope.jsonl': nope.jsonl: no such file"):
        small_cfg(tiny_roberta, sample_path, out, probe=["nope.jsonl"])
    with pytest.raises(MlmkitError, match=r"probe='.*blimp40.jsonl:pair': task 'pair': "
                                          "expected FILE or FILE:TASK"):
        small_cfg(tiny_roberta, sample_path, out, probe=[f"{good}:pair"])
    # A task not named is guessed from the file by train(), before anything is written.
    other = _write(tmp_path / "other.jsonl", [{"text": "hi"}])
    with pytest.raises(MlmkitError, match=r"probe=.*other.jsonl: cannot tell the task"):
        train(small_cfg(tiny_roberta, sample_path, out, probe=[str(other)]))
    assert not out.exists()


def test_resume_keeps_the_base_probe_and_probes_only_the_trained_model(
        tiny_roberta, sample_path, probe_files, tmp_path, monkeypatch):
    out = tmp_path / "run"
    cfg = small_cfg(tiny_roberta, sample_path, out, probe=[str(probe_files["pairs"])],
                    max_steps=2, save_every=2)
    first = train(cfg)
    probed = []
    real = probe_run.run_probes

    def spy(model, specs, tokenizer=None, name=None, **options):
        probed.append(name)
        return real(model, specs, tokenizer=tokenizer, name=name, **options)

    monkeypatch.setattr(probe_run, "run_probes", spy)
    r = train(cfg.__class__(**{**vars(cfg), "resume": str(out), "max_steps": 4}))
    assert r.steps == 4 and probed == [str(out)]  # the trained model only
    key = f"{probe_files['pairs']}:pairs"
    assert r.probes[key]["base"] == first.probes[key]["base"]
    both = probe_models([str(tiny_roberta), str(out)], "pairs", probe_files["pairs"])
    assert r.probes[key]["difference"] == both.comparisons[0]["metrics"]


@pytest.mark.parametrize("task, records, error", [
    ("cloze", [{"masked_sentences": ["No mask here."], "obj_label": "x"}],
     r"line 1: field 'masked_sentences\[0\]'.*expected a string with one \[MASK\]"),
    ("bias", ["sent_more,sent_less,stereo_antistereo", "A b.,C d.,stereo", "A b.,C d.,both"],
     r"line 3: field 'stereo_antistereo': 'both'"),
    ("pairs", [{"sentence_good": "A b."}, {"sentence_good": "A b."}],
     r"line 1: no field 'sentence_bad'.*\(2 bad records in"),
])
def test_check_records_reads_each_task_without_a_model(task, records, error, tmp_path):
    path = tmp_path / ("p.csv" if task == "bias" else "p.jsonl")
    _write(path, records)
    with pytest.raises(MlmkitError, match=error):
        probe_run.check_records(path, task)
