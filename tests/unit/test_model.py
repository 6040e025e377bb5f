"""The sparse prediction head gives the dense loss exactly, and models load with clear messages:
a checkpoint without a masked-LM head loads with a warning; a mistyped path, an unreachable Hub,
a directory without tokenizer files or a device this machine lacks is one line at once, with
no network request or retry it does not need."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from mlmkit.config import MaskConfig
from mlmkit.corpus.masking import Masker, sparse_targets
from mlmkit.errors import MlmkitError
from mlmkit.modeling.load import (
    load_model,
    load_model_config,
    load_tokenizer,
    masked_lm_loss,
    max_block_size,
    sparse_head,
)
from mlmkit.testing import tiny_config


def make_batch(tokenizer, texts, length=48):
    texts = ["A short answer, padded.", *texts[:5]]
    enc = tokenizer(texts, truncation=True, max_length=length, padding="longest")
    ids = np.array(enc["input_ids"])
    inputs, labels = Masker(tokenizer, MaskConfig(mlm_probability=0.3))(
        ids, np.random.default_rng(0))
    return {"input_ids": torch.from_numpy(inputs),
            "attention_mask": torch.tensor(enc["attention_mask"]),
            "labels": torch.from_numpy(labels)}


@pytest.mark.parametrize("kind", ["roberta", "bert"])
def test_sparse_loss_equals_dense_and_hf_loss(kind, request, sample_texts):
    path = request.getfixturevalue(f"tiny_{kind}")
    tok = load_tokenizer(str(path))
    model = load_model(str(path)).eval()
    assert sparse_head(model) is not None  # otherwise both paths would be the dense one
    batch = make_batch(tok, sample_texts)
    assert (batch["attention_mask"] == 0).any()  # padding is part of the batch
    index, targets = sparse_targets(batch["labels"].numpy(), 64)
    indexed = {**batch, "masked_index": torch.from_numpy(index),
               "masked_labels": torch.from_numpy(targets)}
    with torch.no_grad():
        sparse, n_sparse = masked_lm_loss(model, batch, sparse=True)
        dense, n_dense = masked_lm_loss(model, batch, sparse=False)
        by_index, n_index = masked_lm_loss(model, indexed, sparse=True)
        hf = model(**batch).loss
    n = int((batch["labels"] != -100).sum())
    assert int(n_sparse) == int(n_dense) == int(n_index) == n > 20
    assert len(index) > n  # padded rows are part of the indexed batch, and count for nothing
    torch.testing.assert_close(sparse / n, dense / n, rtol=0, atol=1e-5)
    torch.testing.assert_close(by_index, sparse, rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(sparse / n, hf, rtol=0, atol=1e-5)
    torch.testing.assert_close(sparse, hf * n, rtol=1e-6, atol=1e-4)


def test_sparse_gradients_equal_dense(tiny_roberta, sample_texts):
    tok = load_tokenizer(str(tiny_roberta))
    batch = make_batch(tok, sample_texts)
    grads = []
    for sparse in (True, False):
        model = load_model(str(tiny_roberta)).eval()
        loss, n = masked_lm_loss(model, batch, sparse=sparse)
        (loss / n).backward()
        grads.append(model.roberta.encoder.layer[0].attention.self.query.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", ["roberta", "bert"])
def test_checkpoint_without_mlm_head_loads_with_warning(kind, tmp_path, caplog, request):
    from transformers import BertModel, RobertaModel

    src = request.getfixturevalue(f"tiny_{kind}")
    tok = load_tokenizer(str(src))
    cls = RobertaModel if kind == "roberta" else BertModel
    base = cls(tiny_config(kind, len(tok), hidden=32, layers=2), add_pooling_layer=False)
    base.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING, logger="mlmkit"):
        model = load_model(str(tmp_path))
    assert type(model).__name__.endswith("ForMaskedLM")
    warnings = [r for r in caplog.records if r.name == "mlmkit" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no trained masked-LM head" in warnings[0].getMessage()
    # The encoder weights are the checkpoint's, not fresh ones.
    torch.testing.assert_close(model.base_model.embeddings.word_embeddings.weight,
                               base.embeddings.word_embeddings.weight)


def test_full_checkpoint_loads_without_warning(tiny_roberta, caplog):
    with caplog.at_level(logging.WARNING, logger="mlmkit"):
        load_model(str(tiny_roberta))
    assert not [r for r in caplog.records if r.name == "mlmkit"]


def test_from_scratch_uses_shape_only(roberta_shape, tiny_roberta):
    cfg = load_model_config(str(roberta_shape))
    model = load_model(str(roberta_shape), cfg, from_scratch=True, vocab_size=cfg.vocab_size + 3)
    assert model.get_input_embeddings().num_embeddings == cfg.vocab_size
    assert model.config.hidden_size == 32


def test_max_block_size_counts_usable_positions(tiny_roberta, tiny_bert):
    for path in (tiny_roberta, tiny_bert):
        cfg = load_model_config(str(path))
        tok = load_tokenizer(str(path))
        assert max_block_size(cfg, tok) == 512
    cfg = load_model_config(str(tiny_roberta))
    assert cfg.max_position_embeddings == 514  # RoBERTa positions start after the pad index


def test_non_mlm_model_type_and_missing_dir(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=32, n_head=1).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(MlmkitError, match="no masked-LM class"):
        load_model(str(tmp_path / "gpt2"))
    with pytest.raises(MlmkitError) as e:
        load_tokenizer("no-such-org/no-such-model")
    assert "HF_HUB_OFFLINE" in str(e.value) and "local model directory" in str(e.value)


@pytest.mark.parametrize("sparse", [True, False])
def test_masked_logits_by_index_equal_by_boolean_positions(tiny_roberta, sample_texts, sparse):
    from mlmkit.modeling.load import masked_logits

    tok = load_tokenizer(str(tiny_roberta))
    model = load_model(str(tiny_roberta)).eval()
    batch = make_batch(tok, sample_texts)
    positions = batch["labels"] != -100
    index = torch.from_numpy(np.flatnonzero(positions.numpy().reshape(-1)))
    with torch.no_grad():
        by_bool = masked_logits(model, batch["input_ids"], batch["attention_mask"], positions,
                                sparse)
        by_index = masked_logits(model, batch["input_ids"], batch["attention_mask"], index,
                                 sparse)
    assert by_bool.shape == (int(positions.sum()), len(tok)) and len(index) > 20
    torch.testing.assert_close(by_index, by_bool, rtol=0, atol=1e-5)


def test_half_precision_checkpoints_load_as_float32(tiny_roberta, tmp_path):
    # transformers 5 would keep the checkpoint's bf16; training needs float32 master weights.
    model = load_model(str(tiny_roberta))
    model.to(torch.bfloat16).save_pretrained(tmp_path)
    load_tokenizer(str(tiny_roberta)).save_pretrained(tmp_path)
    assert load_model_config(str(tmp_path)).dtype == torch.bfloat16  # really saved as bf16
    for from_scratch in (False, True):
        loaded = load_model(str(tmp_path), from_scratch=from_scratch)
        assert {p.dtype for p in loaded.parameters()} == {torch.float32}


# --------------------------------------------------------------------- a model that is not there


@pytest.fixture
def models_dir(tmp_path, monkeypatch, tiny_roberta):
    """A working directory with models/tiny-roberta in it, as a newcomer's checkout has."""
    import shutil

    shutil.copytree(tiny_roberta, tmp_path / "models" / "tiny-roberta")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("load", [load_tokenizer, load_model_config, load_model])
def test_path_typo_is_an_error_at_once_with_the_close_name(load, models_dir, fake_hub):
    with pytest.raises(MlmkitError) as e:
        load("models/tiny-robrta")
    assert str(e.value) == ("model models/tiny-robrta: no such local directory (did you mean "
                            "models/tiny-roberta?)")
    assert fake_hub.requests == [] and fake_hub.sleeps == []  # the Hub is never asked


@pytest.mark.parametrize("name", ["./tiny-robrta", "~/no-such-model-dir", "a/b/c", "../x"])
def test_names_that_can_only_be_paths_never_reach_the_hub(name, models_dir, fake_hub):
    with pytest.raises(MlmkitError, match="no such local directory"):
        load_tokenizer(name)
    assert fake_hub.requests == []


def test_unreachable_hub_is_one_request_and_one_line(fake_hub):
    """Without a network: one HEAD per load, no retry, no backoff sleep (transformers' own
    lookups retry each file five times, 23 s of sleeps each)."""
    for n, load in enumerate((load_tokenizer, load_model_config, load_model), 1):
        with pytest.raises(MlmkitError) as e:
            load("no-such-org/no-such-model")
        assert "cannot be reached" in str(e.value) and "local model directory" in str(e.value)
        assert "\n" not in str(e.value)
        assert len(fake_hub.requests) == n and fake_hub.sleeps == []
    assert {r.method for r in fake_hub.requests} == {"HEAD"}


@pytest.mark.parametrize("code,error,needle", [
    (404, "RepoNotFound", "no such model on the Hugging Face Hub"),
    (403, "GatedRepo", "gated"),
    (404, "EntryNotFound", "has no config.json"),
])
def test_hub_answers_by_error_type(code, error, needle, fake_hub):
    import httpx2

    fake_hub.answer = lambda request: httpx2.Response(
        code, headers={"X-Error-Code": error, "X-Error-Message": "nope"}, request=request)
    with pytest.raises(MlmkitError, match=needle):
        load_tokenizer("some-org/some-model")
    assert len(fake_hub.requests) == 1 and fake_hub.sleeps == []


def _cache_copy(cache, repo_id, src):
    """`src`'s files as the Hub cache holds a downloaded repo: refs/main -> snapshots/<hash>/."""
    import shutil

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(src, repo / "snapshots" / commit)


def serve_repo(repo_id, src, commit):
    """A fake Hub's answers for one repository holding the files of directory `src`."""
    import hashlib

    import httpx2

    files = {p.name: p.read_bytes() for p in src.iterdir()}

    def answer(request):
        path, name = request.url.path, request.url.path.rsplit("/", 1)[-1]
        if path == f"/api/models/{repo_id}":
            return httpx2.Response(200, request=request, json={
                "id": repo_id, "sha": commit, "siblings": [{"rfilename": f} for f in files]})
        if path == f"/api/models/{repo_id}/tree/main":
            return httpx2.Response(200, request=request, json=[
                {"type": "file", "path": f, "size": len(b), "oid": "0"} for f, b in files.items()])
        if path.startswith(f"/{repo_id}/resolve/") and name in files:
            body = files[name]
            headers = {"X-Repo-Commit": commit, "Content-Length": str(len(body)),
                       "ETag": f'"{hashlib.sha256(body).hexdigest()}"'}
            return httpx2.Response(200, headers=headers, request=request,
                                   content=b"" if request.method == "HEAD" else body)
        return httpx2.Response(404, headers={"X-Error-Code": "EntryNotFound"}, request=request)

    return answer


def test_a_reachable_hub_still_downloads(fake_hub, tiny_roberta, tmp_path, monkeypatch):
    """The Hub path for users with a network: the one check, then transformers' downloads."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    fake_hub.answer = serve_repo("some-org/tiny", tiny_roberta, "ab" * 20)
    tok = load_tokenizer("some-org/tiny")
    model = load_model("some-org/tiny")
    assert tok.get_vocab() == load_tokenizer(str(tiny_roberta)).get_vocab()
    torch.testing.assert_close(model.state_dict(), load_model(str(tiny_roberta)).state_dict())
    heads = [r for r in fake_hub.requests if r.url.path.endswith("/resolve/main/config.json")]
    assert len(heads) == 1 and fake_hub.sleeps == []  # checked once for the three loads
    assert (tmp_path / "models--some-org--tiny" / "snapshots" / ("ab" * 20)).is_dir()


def test_unreachable_hub_uses_a_cached_copy(fake_hub, tiny_roberta, tmp_path, monkeypatch,
                                            caplog):
    from huggingface_hub import constants

    _cache_copy(tmp_path, "some-org/tiny", tiny_roberta)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="mlmkit"):
        tok = load_tokenizer("some-org/tiny")
        model = load_model("some-org/tiny")
    assert len(tok) == len(load_tokenizer(str(tiny_roberta)))
    assert type(model).__name__ == "RobertaForMaskedLM"
    assert len(fake_hub.requests) == 1 and fake_hub.sleeps == []
    assert [r.getMessage() for r in caplog.records if r.name == "mlmkit"] == [
        "the Hugging Face Hub cannot be reached ([Errno -2] Name or service not known); using "
        "the cached copy of some-org/tiny"]


def test_offline_mode_loads_from_the_cache_or_says_it_cannot(tiny_roberta, tmp_path,
                                                           monkeypatch):
    from huggingface_hub import constants

    from mlmkit.modeling.load import hub_cache_only

    hub_cache_only.cache_clear()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    _cache_copy(tmp_path, "some-org/tiny", tiny_roberta)
    assert load_model_config("some-org/tiny").model_type == "roberta"
    with pytest.raises(MlmkitError) as e:
        load_tokenizer("some-org/not-cached")
    assert "HF_HUB_OFFLINE" in str(e.value) and str(tmp_path) in str(e.value)
    hub_cache_only.cache_clear()


def test_directory_without_tokenizer_files_names_them(tiny_roberta, tmp_path):
    """transformers 5 loads a tokenizer of the 5 special tokens from such a directory."""
    import shutil

    for f in ("config.json", "model.safetensors"):
        shutil.copy(tiny_roberta / f, tmp_path / f)
    with pytest.raises(MlmkitError) as e:
        load_tokenizer(str(tmp_path))
    msg = str(e.value)
    assert "no tokenizer files" in msg and "tokenizer.json" in msg and "vocab.txt" in msg
    assert "found: config.json, model.safetensors" in msg
    (tmp_path / "vocab.json").write_text("{}")
    with pytest.raises(MlmkitError, match="vocab.json without merges.txt"):
        load_tokenizer(str(tmp_path))


def test_directory_without_weights_or_config_says_so(roberta_shape, tmp_path):
    with pytest.raises(MlmkitError, match="no weights .*--from-scratch"):
        load_model(str(roberta_shape))
    assert load_model(str(roberta_shape), from_scratch=True) is not None
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(MlmkitError, match="no config.json"):
        load_model_config(str(tmp_path))
    with pytest.raises(MlmkitError, match="is a file; expected a model directory"):
        load_tokenizer(str(tmp_path / "tokenizer.json"))


@pytest.mark.parametrize("device,needle", [
    ("banana", "--device banana: not a device; expected cpu, cuda, cuda:N, mps or auto"),
    ("cuda", "--device cuda: "),
    ("cuda:7", "--device cuda:7: "),
    ("meta", "--device meta: meta devices are not supported"),
])
def test_pick_device_refuses_what_this_machine_lacks(device, needle, monkeypatch):
    from mlmkit.modeling.load import pick_device
    from mlmkit.settings import speaking_cli

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with speaking_cli(), pytest.raises(MlmkitError) as e:
        pick_device(device)
    assert str(e.value).startswith(needle)
    with pytest.raises(MlmkitError) as e:  # from Python: the keyword
        pick_device(device)
    assert str(e.value).startswith(needle.replace(f"--device {device}", f"device={device!r}"))
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type in ("cpu", "mps")


def test_pick_device_counts_the_gpus(monkeypatch):
    from mlmkit.modeling.load import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert pick_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(MlmkitError, match="has 2 CUDA devices"):
        pick_device("cuda:2")
