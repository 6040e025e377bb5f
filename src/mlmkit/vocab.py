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
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlmkit.errors import MlmkitError

log = logging.getLogger("mlmkit")

WORD_PATTERN = r"[^\W\d_]+"
WORD_DEFINITION = ("a maximal run of letters (Unicode letters; digits, underscore, apostrophes "
                   "and other punctuation end a word); its tokens are those overlapping it")
EXTENSION_FILE = "vocab_extension.json"
_WORD = re.compile(WORD_PATTERN)
_BATCH = 256  # texts per encode_batch call: memory stays flat on a large corpus


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
        return self.word_tokens / self.words

    @property
    def single_token_share(self) -> float:
        return self.single_token_words / self.words

    def to_dict(self) -> dict[str, Any]:
        return {"texts": self.texts, "words": self.words, "word_tokens": self.word_tokens,
                "fertility": self.fertility, "single_token_share": self.single_token_share,
                "distinct_words": self.distinct_words, "word_definition": WORD_DEFINITION,
                "costliest": [w.to_dict() for w in self.costliest]}


@dataclass
class _Tally:
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


def _kind(tokenizer: Any) -> tuple[str, dict[str, Any]]:
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


def _backend(tokenizer: Any) -> Any:
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


def _count_text(tally: _Tally, text: str, enc: Any, kind: str, unk: str | None) -> None:
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


def _count_form(tally: _Tally, word: str, pieces: list[str], word_ids: list, a: int,
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


def _tally(tokenizer: Any, texts: list[str], ids: list[list[int]] | None = None) -> _Tally:
    """Count `texts` as `tokenizer` splits them; their token ids go into `ids` if given."""
    kind, _ = _kind(tokenizer)
    backend = _backend(tokenizer)
    tally = _Tally(texts=len(texts))
    for i in range(0, len(texts), _BATCH):
        batch = texts[i:i + _BATCH]
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
        raise MlmkitError("--data: no corpus given; expected files, a Hub dataset id or texts")
    stats = TextStats()
    cfg = DataConfig(data=data, text_field=list(text_field or []), limit=limit, split=split)
    texts = [t for _, t in iter_texts(cfg, stats)]
    if not texts:
        raise MlmkitError(f"--data {describe_source(data)}: no text ({stats.records:,} records, "
                          f"{stats.empty:,} of them empty); expected records with text in "
                          f"{', '.join(stats.fields) or 'a text field'}")
    return texts


def audit_vocab(model_or_tokenizer: Any, data: Any, top: int = 20, *,
                text_field: list[str] | None = None, limit: int | None = None,
                split: str = "train") -> VocabAudit:
    """Tokens per word of a tokenizer (or of the model directory or Hub id it belongs to) over
    `data` (a list of texts, or any corpus `mlmkit train --data` reads, see `corpus_texts`),
    and the `top` words that cost the most tokens."""
    if top < 0:
        raise MlmkitError(f"--top {top}: expected 0 or more")
    tokenizer = _as_tokenizer(model_or_tokenizer)
    return _tally(tokenizer, corpus_texts(data, text_field, limit, split)).audit(top)


# --------------------------------------------------------------------------- extension


@dataclass
class AddedWord:
    """A token `extend_vocab` added: its vocabulary entry, the pieces it replaces."""

    token: str  # as the vocabulary holds it: 'Ġfaucet' (byte-level BPE), 'faucet' (WordPiece)
    word: str  # as first seen in the corpus
    id: int
    pieces: list[str]
    piece_ids: list[int]
    count: int  # occurrences in the corpus as a whole word
    cost: int  # tokens it saves there: count x (pieces - 1)


@dataclass
class VocabExtension:
    """What `extend_vocab` wrote: the new tokens, fertility before and after on the corpus, and
    how many texts tokenize differently other than by a new token standing for its pieces."""

    output: str
    base_model: str
    tokenizer: str  # 'bpe' or 'wordpiece'
    vocab_size_before: int
    vocab_size_after: int
    added: list[AddedWord]
    before: VocabAudit
    after: VocabAudit
    changed_texts: int  # 0 unless a new token changed the split of the text around it

    def to_dict(self) -> dict[str, Any]:
        return {"output": self.output, "base_model": self.base_model, "tokenizer": self.tokenizer,
                "method": _METHOD[self.tokenizer], "init": "mean of the old pieces' rows "
                "(input embedding, output embedding when untied, output bias)",
                "vocab_size": {"before": self.vocab_size_before, "after": self.vocab_size_after},
                "fertility": {"before": self.before.fertility, "after": self.after.fertility},
                "single_token_share": {"before": self.before.single_token_share,
                                       "after": self.after.single_token_share},
                "texts": self.before.texts, "words": self.before.words,
                "changed_texts": self.changed_texts, "word_definition": WORD_DEFINITION,
                "added": [asdict(w) for w in self.added]}

    def summary(self) -> str:
        saved = sum(w.cost for w in self.added)
        shown = ", ".join(f"{w.word} ({len(w.pieces)})" for w in self.added[:8])
        more = f" and {len(self.added) - 8:,} more" if len(self.added) > 8 else ""
        return "\n".join([
            f"saved {self.output}: {self.base_model} with {len(self.added):,} whole-word tokens "
            f"added (vocabulary {self.vocab_size_before:,} -> {self.vocab_size_after:,})",
            f"tokens per word on the corpus: {self.before.fertility:.4f} -> "
            f"{self.after.fertility:.4f}; words kept as one token: "
            f"{self.before.single_token_share:.2%} -> {self.after.single_token_share:.2%} "
            f"({saved:,} of {self.before.word_tokens:,} word tokens saved, "
            f"{self.before.texts:,} texts)",
            f"added (pieces before): {shown}{more}; all in {EXTENSION_FILE}",
            f"texts split differently around a new token: {self.changed_texts:,}"])


_METHOD = {
    "bpe": "each word as a whole pre-token in the BPE vocabulary, with ignore_merges: a "
           "pre-token found whole in the vocabulary is one token, any other is merged as before",
    "wordpiece": "an AddedToken(single_word=True, normalized=True) per word: matched after "
                 "normalisation, never inside a longer word",
}


def _choose(tally: _Tally, add: int, vocab: dict[str, int]) -> list[tuple[str, list]]:
    """The `add` forms that cost the most, costliest first (ties by form, for a stable pick)."""
    ranked = sorted(((f, e) for f, e in tally.forms.items() if f not in vocab),
                    key=lambda fe: (-fe[1][0] * (len(fe[1][1]) - 1), fe[0]))
    if not ranked:
        raise MlmkitError("the corpus has no word that the tokenizer splits into several pieces "
                          "as a whole word; there is nothing to add")
    if len(ranked) < add:
        log.warning("--add %d: the corpus has only %d words split into pieces; adding those",
                    add, len(ranked))
    return ranked[:add]


def _check_ignore_merges(spec: dict[str, Any]) -> None:
    """ignore_merges makes any pre-token found whole in the vocabulary one token. Refuse where
    that would change the split of an existing entry that merges do not build (text without
    the new words must tokenize as before)."""
    from tokenizers import Tokenizer, decoders
    from tokenizers.models import BPE

    model = spec["model"]
    if model.get("ignore_merges"):
        return
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    bpe = BPE(model["vocab"], merges)
    pre = Tokenizer.from_str(json.dumps(spec)).pre_tokenizer
    bytes_ = decoders.ByteLevel()
    unsafe = []
    for entry in model["vocab"]:
        if [t.value for t in bpe.tokenize(entry)] == [entry]:
            continue
        text = bytes_.decode([entry])
        if pre is not None and [p for p, _ in pre.pre_tokenize_str(text)] == [entry]:
            unsafe.append(entry)
    if unsafe:
        raise MlmkitError(f"tokenizer: {len(unsafe)} vocabulary entries that its merges do not "
                          f"build (e.g. {', '.join(map(repr, unsafe[:3]))}) would become one "
                          "token with whole-word matching; expected a BPE whose every entry "
                          "is built by its merges")


def _extended_backend(tokenizer: Any, spec: dict[str, Any], kind: str, forms: list[str]
                      ) -> tuple[Any, list[int]]:
    """A copy of the Rust tokenizer that has `forms` as whole-word tokens, and their ids."""
    from tokenizers import AddedToken, Tokenizer

    if kind == "wordpiece":
        backend = Tokenizer.from_str(json.dumps(spec))
        backend.add_tokens([AddedToken(f, single_word=True, normalized=True) for f in forms])
        return backend, [backend.token_to_id(f) for f in forms]
    _check_ignore_merges(spec)
    vocab = spec["model"]["vocab"]
    start = max([*vocab.values(), *(t["id"] for t in spec.get("added_tokens", []))]) + 1
    for i, f in enumerate(forms):
        vocab[f] = start + i
    spec["model"]["ignore_merges"] = True
    return Tokenizer.from_str(json.dumps(spec)), list(range(start, start + len(forms)))


def _wrap(tokenizer: Any, backend: Any) -> Any:
    """The transformers tokenizer around `backend`, with every setting of `tokenizer`. Saved as
    the generic fast class: model classes such as RobertaTokenizer rebuild their BPE from the
    vocabulary and merges on load, which would drop ignore_merges."""
    from transformers import AutoTokenizer

    from mlmkit.modeling.load import quiet_loading

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        backend.save(str(Path(tmp) / "tokenizer.json"))
        config_path = Path(tmp) / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        config_path.write_text(json.dumps(config))
        for stale in ("vocab.json", "merges.txt", "vocab.txt"):  # the old vocabulary
            (Path(tmp) / stale).unlink(missing_ok=True)
        with quiet_loading():
            return AutoTokenizer.from_pretrained(tmp)


def _head_biases(model: Any, out: Any) -> list[Any]:
    """Every vocabulary-sized bias of the head: the output layer's, and the head's own `bias`
    (BERT's cls.predictions.bias, RoBERTa's lm_head.bias). The head's own is the output
    layer's when the model ties them; when it does not (untied embeddings in transformers 5),
    resizing leaves it at the old size, so it grows here, a parameter of its own as it was."""
    import torch

    biases = [out.bias] if getattr(out, "bias", None) is not None else []
    for module in model.modules():
        own = getattr(module, "bias", None)
        if module is out or out not in module.children() or not isinstance(
                own, torch.nn.Parameter) or any(own is b for b in biases):
            continue
        if biases and own.shape != biases[0].shape:
            grown = torch.zeros_like(biases[0].data)
            grown[:own.shape[0]] = own.data
            own = module.bias = torch.nn.Parameter(grown)
        biases.append(own)
    return biases


def init_new_rows(model: Any, new_ids: list[int], piece_ids: list[list[int]]) -> None:
    """Make room for `new_ids` and set each one's input embedding, output embedding (when not
    tied to the input) and output bias to the mean of its pieces' rows (Hewitt, 2021: a new
    word then starts with the logits its pieces have, instead of taking over the output)."""
    import torch

    rows = max(new_ids) + 1
    if model.get_input_embeddings().num_embeddings < rows:
        model.resize_token_embeddings(rows, mean_resizing=False)
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    tables = [inp.weight]
    if out is not None and out.weight.data_ptr() != inp.weight.data_ptr():
        tables.append(out.weight)
    if out is not None:
        tables += _head_biases(model, out)
    with torch.no_grad():
        for table in tables:
            for new, pieces in zip(new_ids, piece_ids):
                table[new] = table[pieces].mean(0)


def _changed_texts(backend: Any, texts: list[str], old_ids: list[list[int]],
                   expand: dict[int, list[int]]) -> int:
    """Texts whose new tokens, each new id put back as its pieces, differ from the old ones."""
    changed = 0
    for i in range(0, len(texts), _BATCH):
        encs = backend.encode_batch(texts[i:i + _BATCH], add_special_tokens=False)
        for enc, old in zip(encs, old_ids[i:i + _BATCH]):
            new = [p for t in enc.ids for p in expand.get(t, (t,))]
            changed += new != old
    return changed


def extend_vocab(model: str, data: Any, add: int, output: str | Path, *, overwrite: bool = False,
                 text_field: list[str] | None = None, limit: int | None = None,
                 split: str = "train", top: int = 20) -> VocabExtension:
    """Add the `add` words of `data` that cost the most tokens to the vocabulary of `model` as
    whole-word tokens, initialise their rows from their old pieces, and save model and
    tokenizer in `output` with `vocab_extension.json` (which words, their pieces). `output` is
    checked as `mlmkit train` checks its own: new or empty, or with `overwrite` a directory
    mlmkit wrote that holds nothing this reads."""
    from mlmkit.io.sources import describe_source
    from mlmkit.modeling.load import load_model, load_tokenizer
    from mlmkit.training.export import write_model_dir
    from mlmkit.training.rundir import check_output_dir, read_paths, start_run_dir

    if isinstance(add, bool) or not isinstance(add, int) or add < 1:
        raise MlmkitError(f"--add {add}: expected a positive number of words to add")
    out = check_output_dir(output, overwrite=overwrite, inputs=read_paths(str(model), data),
                           resumable=False)
    tokenizer = load_tokenizer(str(model))
    kind, spec = _kind(tokenizer)
    texts = corpus_texts(data, text_field, limit, split)
    old_ids: list[list[int]] = []
    before = _tally(tokenizer, texts, old_ids)
    chosen = _choose(before, add, tokenizer.get_vocab())
    backend, new_ids = _extended_backend(tokenizer, spec, kind, [f for f, _ in chosen])
    extended = _wrap(tokenizer, backend)
    piece_ids = [tokenizer.convert_tokens_to_ids(e[1]) for _, e in chosen]
    changed = _changed_texts(_backend(extended), texts, old_ids, dict(zip(new_ids, piece_ids)))
    weights = load_model(str(model))
    init_new_rows(weights, new_ids, piece_ids)
    added = [AddedWord(form, e[2], i, e[1], p, e[0], e[0] * (len(e[1]) - 1))
             for (form, e), i, p in zip(chosen, new_ids, piece_ids)]
    result = VocabExtension(str(out), str(model), kind, len(tokenizer), len(extended), added,
                            before.audit(top), _tally(extended, texts).audit(top), changed)
    start_run_dir(out, overwrite=overwrite)
    write_model_dir(weights, extended, out,
                    {EXTENSION_FILE: {**result.to_dict(), "data": describe_source(data)}})
    return result
