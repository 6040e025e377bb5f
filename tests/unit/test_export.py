"""Export writes a directory the fill-mask pipeline loads with a card that parses, or nothing."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mlmkit import MlmkitError, TrainConfig
from mlmkit.settings import to_dict
from mlmkit.training.card import CardInfo, base_license, describe_hardware, render_model_card
from mlmkit.training.export import export_model, push

HUB_MODEL = "distilbert/distilroberta-base"
HUB_DATA = "sentence-transformers/eli5"


def run_metrics(base: float | None = 12.3456, final: float | None = 7.891) -> dict:
    def m(ppl):
        return None if ppl is None else {"loss": round(float(torch.tensor(ppl).log()), 6),
                                         "perplexity": ppl, "tokens": 1234, "blocks": 40}

    history = [{"step": s, "epoch": s / 10, "train_seconds": s * 0.5, **m(final)}
               for s in (5, 10)] if final is not None else []
    return {"base": m(base), "final": m(final), "history": history, "steps": 10,
            "train_seconds": 5.0,
            "data": {"records": 1000, "empty_records": 3, "text_field": ["answers.text"],
                     "train_blocks": 160, "eval_blocks": 40, "files": {"x": {"size": 1}}}}


def run_config(model: str, out: Path, **kw) -> dict:
    return to_dict(TrainConfig(model=model, data=HUB_DATA, output=str(out), **kw))


def card_info(model: str, datasets=(HUB_DATA,), **kw) -> CardInfo:
    return CardInfo(base_model=model, datasets=list(datasets),
                    command=f"mlmkit train --model {model} --data {HUB_DATA}",
                    hardware="1 x NVIDIA H200, bf16 mixed precision, torch 2.6.0",
                    train_seconds=754.2, **kw)


@pytest.fixture(scope="module")
def loaded(tiny_roberta):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    return AutoModelForMaskedLM.from_pretrained(tiny_roberta), AutoTokenizer.from_pretrained(
        tiny_roberta)


def test_export_writes_a_model_the_pipeline_loads_with_a_card(loaded, tmp_path):
    from huggingface_hub import ModelCard
    from transformers import pipeline

    model, tok = loaded
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    config, metrics = run_config(HUB_MODEL, out), run_metrics()
    export_model(model, tok, out, config=config, metrics=metrics, card=card_info(HUB_MODEL))

    fill = pipeline("fill-mask", model=str(out), device="cpu")
    assert len(fill("hello <mask> world")) == 5
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert json.loads((out / "train_config.json").read_text()) == config
    assert (out / "notes.txt").read_text() == "mine"
    assert not (out / ".export-tmp").exists()

    card = ModelCard.load(out / "README.md")
    assert card.data.pipeline_tag == "fill-mask" and card.data.library_name == "transformers"
    assert card.data.base_model == HUB_MODEL and card.data.datasets == [HUB_DATA]
    assert card.data.tags == ["mlmkit", "fill-mask", "masked-lm"]
    assert card.data.eval_results[0].metric_value == pytest.approx(7.891)
    text = card.text
    assert f"is [{HUB_MODEL}](https://huggingface.co/{HUB_MODEL}) fine-tuned" in text
    assert "| 12.35 |" in text and "| 7.89 |" in text and "eval seed 1234" in text
    assert f"mlmkit train --model {HUB_MODEL} --data {HUB_DATA}" in text
    assert "1 x NVIDIA H200" in text and "12 min 34 s" in text
    assert "| Records | 1,000 |" in text and "| Empty records | 3 |" in text
    assert "80% `<mask>`, 10% random token, 10% unchanged" in text
    assert f'pipeline("fill-mask", model="{out}")' in text
    assert "The answer is <mask>." in text


def test_local_base_gives_no_base_model_and_its_license(tiny_bert, tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub import ModelCard
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    base = tmp_path / "base"
    base.mkdir()
    (base / "README.md").write_text("---\nlicense: apache-2.0\nlanguage: en\n---\n# a model\n")
    assert base_license(str(base)) == "apache-2.0"
    assert base_license(str(tmp_path)) is None  # no card
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda *a, **k: pytest.fail("base_license went to the network"))
    assert base_license(HUB_MODEL) is None

    model, tok = AutoModelForMaskedLM.from_pretrained(tiny_bert), AutoTokenizer.from_pretrained(
        tiny_bert)
    out = tmp_path / "run"
    export_model(model, tok, out, config=run_config(str(base), out),
                 metrics=run_metrics(), card=card_info(str(base), datasets=["corpus.jsonl"]))
    card = ModelCard.load(out / "README.md")
    assert "base_model" not in card.data.to_dict() and "datasets" not in card.data.to_dict()
    assert card.data.license == "apache-2.0"
    assert f"the local model `{base}`" in card.text and "`corpus.jsonl`" in card.text
    assert "The answer is [MASK]." in card.text and "`[MASK]`, 10% random" in card.text


def test_unmeasured_perplexities_and_from_scratch_render(tmp_path):
    config = run_config(HUB_MODEL, tmp_path / "x", train_tokenizer=500)
    card = render_model_card(card_info(HUB_MODEL, from_scratch=True), run_metrics(base=None),
                             config)
    assert "trained from scratch" in card.text and "new tokenizer of 500 tokens" in card.text
    assert "| Random initialisation | not measured | not measured |" in card.text
    assert "| This model |" in card.text and "base model was not measured" in card.text

    card = render_model_card(card_info(HUB_MODEL), run_metrics(base=None, final=None), config)
    assert "Perplexity was not measured: the run had no held-out data" in card.text
    assert "model-index" not in card.data.to_dict() and card.data.base_model == HUB_MODEL


def test_a_crash_while_saving_leaves_nothing_in_out(loaded, tmp_path, monkeypatch):
    model, tok = loaded
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")

    def crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(model, "save_pretrained", crash)
    with pytest.raises(OSError, match="disk full"):
        export_model(model, tok, out, config=run_config(HUB_MODEL, out), metrics=run_metrics(),
                     card=card_info(HUB_MODEL))
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_describe_hardware_names_device_processes_and_torch(monkeypatch):
    cpu = describe_hardware(None) if not torch.cuda.is_available() else describe_hardware(
        SimpleNamespace(num_processes=1, device=torch.device("cpu"), mixed_precision="no"))
    assert cpu.startswith("CPU: ") and "cores" in cpu and f"torch {torch.__version__}" in cpu

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "NVIDIA H200")
    gpus = SimpleNamespace(num_processes=2, device=torch.device("cuda", 0),
                           mixed_precision="bf16")
    assert describe_hardware(gpus) == f"2 x NVIDIA H200, bf16 mixed precision, torch " \
                                      f"{torch.__version__}"


def test_push_uploads_the_export_without_private_files(loaded, tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub.utils import filter_repo_objects

    model, tok = loaded
    out = tmp_path / "run"
    (out / "checkpoints" / "step_2").mkdir(parents=True)
    (out / "checkpoints" / "step_2" / "optimizer.bin").write_bytes(b"x")
    (out / ".mlmkit-run").write_text("marker")
    (out / "metrics.jsonl").write_text("{}\n")
    export_model(model, tok, out, config=run_config(HUB_MODEL, out), metrics=run_metrics(),
                 card=card_info(HUB_MODEL))
    calls = {}

    class FakeApi:
        def create_repo(self, repo_id, exist_ok=False, private=None):
            calls["repo"] = (repo_id, exist_ok)

        def upload_folder(self, repo_id, folder_path, ignore_patterns, allow_patterns=None,
                          **kw):
            files = [str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*")
                     if p.is_file()]
            calls["uploaded"] = set(filter_repo_objects(files, allow_patterns=allow_patterns,
                                                        ignore_patterns=ignore_patterns))
            return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/abc")

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    # The login check before the upload is test_push.py's; here, a login that may write.
    monkeypatch.setattr("mlmkit.training.export.check_push_access", lambda repo, where: "me")
    assert push(out, "me/my-model") == "https://huggingface.co/me/my-model/commit/abc"
    assert calls["repo"] == ("me/my-model", True)
    assert {"README.md", "model.safetensors", "tokenizer.json", "metrics.json",
            "metrics.jsonl", "train_config.json", "config.json"} <= calls["uploaded"]
    assert not any(f.startswith("checkpoints") for f in calls["uploaded"])
    assert ".mlmkit-run" not in calls["uploaded"]

    class FailingApi(FakeApi):
        def upload_folder(self, **kw):
            raise RuntimeError("401 Unauthorized\nmore detail")

    monkeypatch.setattr(huggingface_hub, "HfApi", FailingApi)
    with pytest.raises(MlmkitError) as e:
        push(out, "me/my-model")
    msg = str(e.value)
    assert "me/my-model" in msg and "401 Unauthorized" in msg and str(out) in msg
    assert "\n" not in msg


def test_weights_of_an_earlier_export_in_another_layout_are_removed(loaded, tmp_path):
    model, tok = loaded
    out = tmp_path / "run"
    out.mkdir()
    earlier = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
               "model.safetensors.index.json"]
    for name in [*earlier, "model_backup.safetensors"]:
        (out / name).write_text("{}")
    export_model(model, tok, out, config=run_config(HUB_MODEL, out), metrics=run_metrics(),
                 card=card_info(HUB_MODEL))
    assert not any((out / name).exists() for name in earlier)
    assert (out / "model_backup.safetensors").read_text() == "{}"  # not a name export writes
    from transformers import AutoModelForMaskedLM

    reloaded = AutoModelForMaskedLM.from_pretrained(out)
    assert torch.equal(reloaded.lm_head.bias, model.lm_head.bias)


def test_card_states_what_was_measured_and_what_ran(tmp_path):
    metrics = run_metrics()
    # A hash split holds each record out with probability eval_fraction: 23.6%, not 20%.
    metrics["data"].update(train_records=764, eval_records=236, eval_held_out=True,
                           line_by_line=False)
    metrics["base"].update(accuracy=0.1, top5_accuracy=0.25)
    metrics["final"].update(accuracy=0.3125, top5_accuracy=0.5)
    config = run_config(HUB_MODEL, tmp_path / "x", epochs=1, max_steps=1)
    text = render_model_card(card_info(HUB_MODEL, precision="bf16"), metrics, config).text
    split = "236 of 1,000 records (23.6%) held out by eval_fraction 0.2, seed 42"
    assert f"predicted tokens; {split})" in text and "20% of the records" not in text
    assert f"| Held-out blocks | 40 (from {split}) |" in text
    assert "Eval held out" not in text and "True" not in text and "| Line by line | no |" in text
    assert "| Mixed precision | bf16 (asked: auto) |" in text
    assert "| Epochs | 1 (capped at 1 step) |" in text
    assert "| 12.35 | 10.0% | 25.0% |" in text and "| 7.89 | 31.2% | 50.0% |" in text
    assert "first guess for a masked token is right 31.2% of the time, against 10.0%" in text

    cpu = render_model_card(card_info(HUB_MODEL, precision="no"), metrics,
                            run_config(HUB_MODEL, tmp_path / "x", mixed_precision="no")).text
    assert "| Mixed precision | no (float32) |" in cpu
    unknown = render_model_card(card_info(HUB_MODEL), metrics, config).text
    assert "| Mixed precision | auto (what ran was not recorded) |" in unknown
    eval_file = render_model_card(card_info(HUB_MODEL), metrics, run_config(
        HUB_MODEL, tmp_path / "x", eval_data="held.jsonl")).text
    assert "every record of `held.jsonl`" in eval_file and "records (" not in eval_file


def test_card_of_metrics_without_accuracy_or_split_counts(tmp_path):
    """metrics.json of a run recorded before accuracy and the counts existed still renders."""
    metrics = run_metrics()
    metrics["history"] = [dict(metrics["history"][0], step=s) for s in range(1, 43)]
    text = render_model_card(card_info(HUB_MODEL), metrics,
                             run_config(HUB_MODEL, tmp_path / "x")).text
    assert "| 12.35 | not measured | not measured |" in text
    assert "records held out by eval_fraction 0.2, seed 42" in text
    assert "first guess" not in text
    assert "Every 3rd evaluation" in text
