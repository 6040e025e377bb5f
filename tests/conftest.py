"""Shared fixtures: tiny tokenizers and models built offline, the corpora, an isolated cache."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

# Before transformers / huggingface_hub are imported anywhere: no test may reach the Hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "assets" / "eli5-sample.jsonl.gz"
ELI5 = REPO / ".." / "shared" / "data" / "eli5_category" / "eli5-category-test.json.gz"
SPLADE = REPO / ".." / "shared" / "models" / "bert-tiny-splade"
VOCAB = 800
HIDDEN = 32


def read_sample(n: int | None = None) -> list[dict]:
    with gzip.open(SAMPLE, "rt", encoding="utf-8") as fh:
        recs = [json.loads(line) for line in fh if line.strip()]
    return recs[:n] if n else recs


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own block cache, so nothing is written to ~/.cache."""
    monkeypatch.setenv("MLMKIT_CACHE", str(tmp_path_factory.mktemp("mlmkit-cache")))


@pytest.fixture(scope="session")
def sample_path() -> Path:
    assert SAMPLE.is_file(), f"{SAMPLE} ships with the repository"
    return SAMPLE


@pytest.fixture(scope="session")
def eli5_path() -> Path:
    if not ELI5.is_file():
        pytest.skip(f"real ELI5-Category data not found at {ELI5.resolve()}")
    return ELI5.resolve()


@pytest.fixture(scope="session")
def sample_records() -> list[dict]:
    return read_sample()


@pytest.fixture(scope="session")
def sample_texts(sample_records) -> list[str]:
    return [" ".join(r["answers"]["text"]) for r in sample_records]


@pytest.fixture(scope="session")
def roberta_tokenizer(sample_texts):
    from mlmkit.testing import train_tokenizer

    return train_tokenizer(sample_texts[:500], "roberta", VOCAB)


@pytest.fixture(scope="session")
def bert_tokenizer(sample_texts):
    from mlmkit.testing import train_tokenizer

    return train_tokenizer(sample_texts[:500], "bert", VOCAB)


def _shared_tokenizer(name: str):
    path = REPO / ".." / "shared" / "models" / name
    if not (path / "tokenizer.json").is_file():
        pytest.skip(f"real tokenizer files not found at {path.resolve()}")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path.resolve()))


@pytest.fixture(scope="session")
def distilroberta_tokenizer():
    """The real DistilRoBERTa tokenizer (byte-level BPE, <pad> = 1), from ../shared."""
    return _shared_tokenizer("distilroberta-base-shape")


@pytest.fixture(scope="session")
def bert_base_tokenizer():
    """The real bert-base-uncased tokenizer (WordPiece, [PAD] = 0), from ../shared."""
    return _shared_tokenizer("bert-base-uncased-shape")


@pytest.fixture(scope="session")
def sentencepiece_tokenizer(sample_texts):
    from mlmkit.testing import train_tokenizer

    return train_tokenizer(sample_texts[:500], "sentencepiece", VOCAB)


def _save(tmp_path_factory, texts, name: str, kind: str, weights: bool = True) -> Path:
    from mlmkit.testing import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp(name), texts[:500], kind, VOCAB,
                           hidden=HIDDEN, layers=2, weights=weights)


@pytest.fixture(scope="session")
def tiny_roberta(tmp_path_factory, sample_texts) -> Path:
    """A full random-init RoBERTa masked-LM directory (tokenizer + config + weights)."""
    return _save(tmp_path_factory, sample_texts, "tiny-roberta", "roberta")


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory, sample_texts) -> Path:
    """A full random-init BERT masked-LM directory with a WordPiece tokenizer."""
    return _save(tmp_path_factory, sample_texts, "tiny-bert", "bert")


@pytest.fixture(scope="session")
def roberta_shape(tmp_path_factory, sample_texts) -> Path:
    """Tokenizer + config without weights, for --from-scratch."""
    return _save(tmp_path_factory, sample_texts, "roberta-shape", "roberta", weights=False)


@pytest.fixture(scope="session")
def splade() -> Path:
    """The real pretrained BERT-tiny masked LM with its head, from ../shared."""
    if not (SPLADE / "model.safetensors").is_file():
        pytest.skip(f"the pretrained bert-tiny-splade is not at {SPLADE.resolve()}")
    return SPLADE


@pytest.fixture(scope="session")
def trained_roberta(tmp_path_factory, tiny_roberta, sample_path):
    """A tiny RoBERTa trained briefly on ELI5 through the library: (TrainConfig, TrainResult).
    The real test split when present, else the sample in the repository (same records)."""
    from mlmkit import TrainConfig, train

    data = ELI5.resolve() if ELI5.is_file() else sample_path
    cfg = TrainConfig(model=str(tiny_roberta), data=str(data), text_field=["answers.text"],
                      limit=300, block_size=64, output=str(tmp_path_factory.mktemp("trained")),
                      max_steps=40, batch_size=8, eval_batch_size=16, learning_rate=1e-3,
                      log_every=5, quiet=True, cache_dir=str(tmp_path_factory.mktemp("tc")))
    return cfg, train(cfg)


class FakeHub:
    """What `fake_hub` gives a test: the requests huggingface_hub made, the backoff sleeps it
    asked for, and `answer(request) -> httpx response` (raise for a network failure)."""

    def __init__(self) -> None:
        self.requests: list = []
        self.sleeps: list[float] = []
        self.answer = self.unreachable

    @staticmethod
    def unreachable(request):
        import httpx2

        raise httpx2.ConnectError("[Errno -2] Name or service not known", request=request)


@pytest.fixture
def fake_hub(monkeypatch):
    """huggingface_hub and datasets online (HF_HUB_OFFLINE off), but every HTTP request answered
    here, without a network: by default as a Hub that cannot be reached. Backoff sleeps are
    recorded, not slept, so a test of the retries that were there costs no time."""
    import datasets
    import httpx2
    from huggingface_hub import constants
    from huggingface_hub.utils import _http

    from mlmkit.modeling import load as model

    hub = FakeHub()

    def handle(request):
        if request.url.path == "/api/agent-harnesses":
            # huggingface_hub's detection of AI-agent shells (once a day, where their
            # variables are set): not a request about a model.
            return httpx2.Response(404, request=request)
        hub.requests.append(request)
        return hub.answer(request)

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)  # its own copy of the flag
    monkeypatch.setattr(_http.time, "sleep", hub.sleeps.append)
    _http.set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(handle)))
    model.hub_cache_only.cache_clear()  # what an earlier test found out about a name
    yield hub
    _http.set_client_factory(_http.default_client_factory)
    model.hub_cache_only.cache_clear()
