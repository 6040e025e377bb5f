"""Tiny tokenizers and models built locally in seconds, for tests, demos and benchmarks that
must run offline (no Hub): a byte-level BPE tokenizer (RoBERTa's kind) or a WordPiece one
(BERT's kind), trained on any texts, and a random-init masked LM config to go with it; and
`LiveServer`, an app served on a loopback port in a thread, and `call_app`, in-process."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def train_tokenizer(texts: Iterable[str], kind: str = "roberta", vocab_size: int = 1000) -> Any:
    """A `PreTrainedTokenizerFast` of the given kind ('roberta': byte-level BPE, 'bert':
    WordPiece, 'sentencepiece': Unigram with '▁' word markers) trained on `texts`."""
    from tokenizers import (
        AddedToken,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    if kind == "roberta":
        specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        tok = Tokenizer(models.BPE(unk_token=None))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
        tok.train_from_iterator(texts, trainer)
        tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
        # As RoBERTa's: "<mask>" swallows the space before it, so "a <mask> galaxy" masks a word.
        tok.add_special_tokens([AddedToken("<mask>", lstrip=True, normalized=False, special=True)])
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>",
            cls_token="<s>", unk_token="<unk>", pad_token="<pad>",
            mask_token="<mask>", model_max_length=512)
    if kind == "bert":
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials,
                                            show_progress=False)
        tok.train_from_iterator(texts, trainer)
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
            cls_token="[CLS]", mask_token="[MASK]", model_max_length=512)
    if kind == "sentencepiece":  # XLM-R / ALBERT style: Unigram model, '▁' marks word starts
        specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        tok = Tokenizer(models.Unigram())
        tok.normalizer = normalizers.NFKC()
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials,
                                          unk_token="<unk>", show_progress=False)
        tok.train_from_iterator(texts, trainer)
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
            special_tokens=[("<s>", 0), ("</s>", 2)])
        tok.add_special_tokens([AddedToken("<mask>", lstrip=True, normalized=False, special=True)])
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>",
            cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
            model_max_length=512)
    raise ValueError(f"kind {kind!r}: expected 'roberta', 'bert' or 'sentencepiece'")


def tiny_config(kind: str, vocab_size: int, hidden: int = 64, layers: int = 2,
                max_positions: int = 512) -> Any:
    """A small random-init masked-LM config of the given kind."""
    from transformers import BertConfig, RobertaConfig

    common = dict(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                  num_attention_heads=max(1, hidden // 32), intermediate_size=hidden * 2)
    if kind == "roberta":
        return RobertaConfig(**common, max_position_embeddings=max_positions + 2, pad_token_id=1,
                             bos_token_id=0, eos_token_id=2, type_vocab_size=1)
    if kind == "bert":
        return BertConfig(**common, max_position_embeddings=max_positions, pad_token_id=0)
    raise ValueError(f"kind {kind!r}: expected 'roberta' or 'bert'")


def save_tiny_model(path: str | Path, texts: Iterable[str], kind: str = "roberta",
                    vocab_size: int = 1000, hidden: int = 64, layers: int = 2,
                    weights: bool = True, seed: int = 0) -> Path:
    """Write a model directory: tokenizer + config (+ random weights unless `weights=False`,
    which gives a 'shape' directory for --from-scratch, like ../shared/models/*-shape)."""
    import torch
    from transformers import AutoModelForMaskedLM

    path = Path(path)
    tok = train_tokenizer(texts, kind, vocab_size)
    cfg = tiny_config(kind, len(tok), hidden, layers)
    cfg.architectures = ["RobertaForMaskedLM" if kind == "roberta" else "BertForMaskedLM"]
    tok.save_pretrained(path)
    if weights:
        torch.manual_seed(seed)
        AutoModelForMaskedLM.from_config(cfg).save_pretrained(path)
    else:
        cfg.save_pretrained(path)
    return path


def call_app(app: Any, fn: Any) -> Any:
    """`await fn(client)` against the ASGI `app` in-process, through httpx's ASGI transport in
    an event loop of its own: a server's requests without a socket."""
    import asyncio

    import httpx

    async def main() -> Any:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await fn(client)

    return asyncio.run(main())


class LiveServer:
    """uvicorn serving `app` on a free 127.0.0.1 port in a daemon thread, for a real client (a
    browser, `InferenceClient`, a load generator): `with LiveServer(app) as s: get(s.url)`.
    The socket is bound and listening before uvicorn starts, so there is no port race and a
    client that connects early waits in the backlog until the server accepts."""

    def __init__(self, app: Any, backlog: int = 64, **connections: Any) -> None:
        """`connections`: `header_timeout_s` and `max_connections`, as `mlmkit serve` takes
        them (its defaults otherwise: the server under test is the one `serve` runs)."""
        import uvicorn

        from mlmkit.serving.connections import server_config

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(backlog)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(server_config(app, log_level="warning", backlog=backlog,
                                                   **connections))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)

    def __enter__(self) -> LiveServer:
        import httpx

        self.thread.start()
        for _ in range(20):  # bounded: each try waits at most 10 s in the backlog
            try:
                if httpx.get(f"{self.url}/health", timeout=10).status_code == 200:
                    return self
            except httpx.TransportError:
                if not self.thread.is_alive():
                    break
        self.__exit__()
        raise RuntimeError(f"the server at {self.url} did not come up")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


def reference_pll(model: Any, tokenizer: Any, text: str, metric: str = "original"
                  ) -> list[float]:
    """Log-probabilities of each scored token of `text`, computed the slow obvious way: one
    masked copy at a time through the whole model (dense logits, no batching, no padding).
    The reference `mlmkit.inference.score.Scorer` is tested against; written without its code."""
    import torch

    enc = tokenizer(text, return_special_tokens_mask=True)
    ids, words = enc["input_ids"], enc.word_ids()
    positions = [p for p, s in enumerate(enc["special_tokens_mask"]) if not s]
    logprob = {}
    with torch.no_grad():
        for p in positions:
            if metric == "whole-word" and p in logprob:
                continue
            same_word = [q for q in positions if words[p] is not None and words[q] == words[p]]
            masked = {"original": [p], "word-l2r": [p] + [q for q in same_word if q > p],
                      "whole-word": same_word or [p]}[metric]
            x = list(ids)
            for q in masked:
                x[q] = tokenizer.mask_token_id
            out = model(input_ids=torch.tensor([x])).logits[0].float().log_softmax(-1)
            for q in ([p] if metric != "whole-word" else masked):
                logprob[q] = out[q, ids[q]].item()
    return [logprob[p] for p in positions]
