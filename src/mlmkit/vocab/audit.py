"""How well a tokenizer fits a corpus (tokens per word, the words that cost the most), and a
model whose vocabulary gains the costliest words as whole-word tokens, each new embedding the
mean of its old pieces' embeddings.

A *word* is a maximal run of letters (Unicode letters; digits, underscore, apostrophes and other
punctuation end it, so "don't" is "don" and "t"): the regular expression `WORD_PATTERN`, applied
to the raw text whatever the tokenizer, so that BPE and WordPiece numbers compare. A word's
tokens are the tokens whose character span overlaps it.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlmkit.errors import MlmkitError
from mlmkit.settings import named

log = logging.getLogger("mlmkit")

WORD_PATTERN = r"[^\W\d_]+"
WORD_DEFINITION = ("a maximal run of letters (Unicode letters; digits, underscore, apostrophes "
                   "and other punctuation end a word); its tokens are those overlapping it")
EXTENSION_FILE = "vocab_extension.json"
_WORD = re.compile(WORD_PATTERN)
BATCH = 256  # texts per encode_batch call: memory stays flat on a large corpus


@dataclass
class WordCost:
    """One word of the corpus: how often it occurs and how many tokens it costs in all."""

    word: str
    count: int
    tokens: int  # over all its occurrences
    pieces: list[str]  # the tokens of its first occurrence

    @property
    def cost(self) -> int:
        """Tokens beyond one per occurrence: what a single-token word would save."""
        return self.tokens - self.count

    def to_dict(self) -> dict[str, Any]:
        """The word's record as JSON output shows it."""
        return {"word": self.word, "count": self.count, "tokens_per_word": self.tokens / self.count,
                "cost": self.cost, "pieces": self.pieces}


@dataclass
class VocabAudit:
    """Tokens per word over a corpus: `fertility`, the share of words that are one token, and
    the words that cost the most tokens (count x extra pieces), costliest first."""

    texts: int
    words: int
    word_tokens: int  # tokens overlapping a word (punctuation, digits and specials left out)
    single_token_words: int
    distinct_words: int
    costliest: list[WordCost]

    @property
    def fertility(self) -> float:
        """Tokens per word, over all the corpus's words."""
        return self.word_tokens / self.words

    @property
    def single_token_share(self) -> float:
        """The share of the corpus's words that are one token each."""
        return self.single_token_words / self.words

    def to_dict(self) -> dict[str, Any]:
        """The audit as a JSON-ready dict (`mlmkit vocab --json`)."""
        return {"texts": self.texts, "words": self.words, "word_tokens": self.word_tokens,
                "fertility": self.fertility, "single_token_share": self.single_token_share,
                "distinct_words": self.distinct_words, "word_definition": WORD_DEFINITION,
                "costliest": [w.to_dict() for w in self.costliest]}


@dataclass
class WordTally:
    """What one pass over a corpus counts: per word, and per whole pre-token form of a word
    split into several pieces (the candidates for a new token)."""

    texts: int = 0
    words: int = 0
    word_tokens: int = 0
    single: int = 0
    per_word: dict[str, list] = field(default_factory=dict)  # word -> [count, tokens, pieces]
    forms: dict[str, list] = field(default_factory=dict)  # form -> [count, pieces, a word]

    def audit(self, top: int) -> VocabAudit:
        costs = [WordCost(w, c, t, p) for w, (c, t, p) in self.per_word.items() if t > c]
        costs.sort(key=lambda w: (-w.cost, w.word))
        return VocabAudit(self.texts, self.words, self.word_tokens, self.single,
                          len(self.per_word), costs[:top])


def tokenizer_kind(tokenizer: Any) -> tuple[str, dict[str, Any]]:
    """'bpe' (byte-level BPE: RoBERTa, GPT-2, ModernBERT) or 'wordpiece' (BERT), and the
    tokenizer's JSON; anything else cannot take whole-word tokens (see `extend_vocab`)."""
    if not getattr(tokenizer, "is_fast", False):
        raise MlmkitError(f"tokenizer {type(tokenizer).__name__}: mlmkit vocab needs a fast "
                          "(Rust) tokenizer and this one is not")
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec.get("model") or {}
    pre = json.dumps(spec.get("pre_tokenizer"))
    if model.get("type") == "WordPiece":
        return "wordpiece", spec
    if model.get("type") == "BPE" and '"ByteLevel"' in pre and not model.get(
            "continuing_subword_prefix") and not model.get("end_of_word_suffix"):
        return "bpe", spec
    raise MlmkitError(f"tokenizer {type(tokenizer).__name__}: a {model.get('type')} model with "
                      f"pre-tokenizer {pre[:60]}; vocab extend handles WordPiece (BERT) and "
                      "byte-level BPE (RoBERTa, GPT-2) tokenizers")


def backend_of(tokenizer: Any) -> Any:
    """A copy of the Rust tokenizer without truncation or padding: every token is counted."""
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_truncation()
    backend.no_padding()
    return backend


def _form(tokens: list[str], kind: str) -> str:
    """The string the tokenizer's model sees for a whole pre-token: for byte-level BPE its
    pieces joined ('Ġimmun' + 'oh' ... = 'Ġimmunoh...'), for WordPiece without the '##'."""
    if kind == "bpe":
        return "".join(tokens)
    return tokens[0] + "".join(t[2:] for t in tokens[1:])


def _count_text(tally: WordTally, text: str, enc: Any, kind: str, unk: str | None) -> None:
    spans = [(m.start(), m.end(), m.group()) for m in _WORD.finditer(text)]
    if not spans:
        return
    starts = np.array([s for s, _, _ in spans])
    ends = np.array([e for _, e, _ in spans])
    offsets = np.array(enc.offsets, dtype=np.int64).reshape(-1, 2)
    idx = np.flatnonzero(offsets[:, 1] > offsets[:, 0])  # specials and empty tokens: no text
    # Token k overlaps words lo[k] .. hi[k] - 1 (one spanning two words counts for each); both
    # bounds rise with k, as the tokens follow the text.
    lo = np.searchsorted(ends, offsets[idx, 0], side="right")
    hi = np.searchsorted(starts, offsets[idx, 1], side="left")
    diff = np.zeros(len(spans) + 1, dtype=np.int64)
    np.add.at(diff, lo, 1)
    np.add.at(diff, hi, -1)
    counts = np.cumsum(diff)[:-1]
    first = np.searchsorted(hi, np.arange(len(spans)), side="right")  # first k with hi > j
    tokens, word_ids = enc.tokens, enc.word_ids
    for j, (_, _, word) in enumerate(spans):
        n = int(counts[j])
        if n == 0:  # every character dropped by the normalizer
            continue
        at = idx[first[j]:first[j] + n]
        pieces = [tokens[i] for i in at]
        tally.words += 1
        tally.word_tokens += n
        tally.single += n == 1
        entry = tally.per_word.get(word)
        if entry is None:
            tally.per_word[word] = [1, n, pieces]
        else:
            entry[0] += 1
            entry[1] += n
        if n > 1 and unk not in pieces and at[-1] - at[0] == n - 1:
            _count_form(tally, word, pieces, word_ids, int(at[0]), kind)


def _count_form(tally: WordTally, word: str, pieces: list[str], word_ids: list, a: int,
                kind: str) -> None:
    """Count the word's pre-token as a candidate when the word is that pre-token whole (not
    "don" of "don't", which WordPiece splits at the apostrophe)."""
    n, w = len(pieces), word_ids[a]
    if w is None or any(x != w for x in word_ids[a:a + n]):
        return
    if (a > 0 and word_ids[a - 1] == w) or (a + n < len(word_ids) and word_ids[a + n] == w):
        return
    form = _form(pieces, kind)
    entry = tally.forms.get(form)
    if entry is None:
        tally.forms[form] = [1, pieces, word]
    else:
        entry[0] += 1


def tally_words(tokenizer: Any, texts: list[str], ids: list[list[int]] | None = None) -> WordTally:
    """Count `texts` as `tokenizer` splits them; their token ids go into `ids` if given."""
    kind, _ = tokenizer_kind(tokenizer)
    backend = backend_of(tokenizer)
    tally = WordTally(texts=len(texts))
    for i in range(0, len(texts), BATCH):
        batch = texts[i:i + BATCH]
        for text, enc in zip(batch, backend.encode_batch(batch, add_special_tokens=False)):
            _count_text(tally, text, enc, kind, tokenizer.unk_token)
            if ids is not None:
                ids.append(enc.ids)
    if tally.words == 0:
        raise MlmkitError(f"the corpus has no words ({len(texts):,} texts; a word is "
                          f"{WORD_DEFINITION}); expected text")
    return tally


def _as_tokenizer(model_or_tokenizer: Any) -> Any:
    if isinstance(model_or_tokenizer, (str, Path)):
        from mlmkit.modeling.load import load_tokenizer

        return load_tokenizer(str(model_or_tokenizer))
    return model_or_tokenizer


def format_audit(name: str, audit: VocabAudit) -> str:
    """The audit as `mlmkit vocab audit` prints it: totals, then a table of the costliest."""
    lines = [f"{name}: {audit.fertility:.4f} tokens per word, {audit.single_token_share:.2%} of "
             f"words one token ({audit.words:,} words, {audit.distinct_words:,} distinct, "
             f"in {audit.texts:,} texts; a word is {WORD_DEFINITION})"]
    if audit.costliest:
        width = max(12, *(len(w.word) for w in audit.costliest))
        lines += ["", f"{'word':<{width}} {'count':>8} {'tokens':>7} {'cost':>8}  pieces"]
        lines += [f"{w.word:<{width}} {w.count:>8,} {w.tokens / w.count:>7.2f} {w.cost:>8,}  "
                  f"{' '.join(w.pieces)}" for w in audit.costliest]
    return "\n".join(lines)


def corpus_texts(data: Any, text_field: list[str] | None = None, limit: int | None = None,
                 split: str = "train") -> list[str]:
    """The non-empty texts of a corpus, read as `mlmkit train --data` reads it: a list of texts
    or records, a datasets.Dataset, local files or a Hub dataset id; `text_field` picks and
    joins fields as there."""
    from mlmkit.config import DataConfig
    from mlmkit.io.fields import TextStats
    from mlmkit.io.sources import describe_source, iter_texts

    if isinstance(data, str) and not data.strip():
        raise MlmkitError(f"{named('data')}: no corpus given; expected files, a Hub dataset id "
                          "or texts")
    stats = TextStats()
    cfg = DataConfig(data=data, text_field=list(text_field or []), limit=limit, split=split)
    texts = [t for _, t in iter_texts(cfg, stats)]
    if not texts:
        raise MlmkitError(f"{named('data', describe_source(data))}: no text "
                          f"({stats.records:,} records, {stats.empty:,} of them empty); "
                          "expected records with text in "
                          f"{', '.join(stats.fields) or 'a text field'}")
    return texts


def audit_vocab(model_or_tokenizer: Any, data: Any, top: int = 20, *,
                text_field: list[str] | None = None, limit: int | None = None,
                split: str = "train") -> VocabAudit:
    """Tokens per word of a tokenizer (or of the model directory or Hub id it belongs to) over
    `data` (a list of texts, or any corpus `mlmkit train --data` reads, see `corpus_texts`),
    and the `top` words that cost the most tokens."""
    if top < 0:
        raise MlmkitError(f"{named('top', top)}: expected 0 or more")
    tokenizer = _as_tokenizer(model_or_tokenizer)
    return tally_words(tokenizer, corpus_texts(data, text_field, limit, split)).audit(top)
