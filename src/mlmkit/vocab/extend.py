"""`extend_vocab`: a model whose vocabulary gains the costliest words of a corpus as whole-word
tokens, each new embedding (input, output, bias) the mean of its old pieces' rows; the audit
before and after comes from `vocab.audit`."""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mlmkit.errors import MlmkitError
from mlmkit.settings import named
from mlmkit.vocab.audit import (
    BATCH,
    EXTENSION_FILE,
    WORD_DEFINITION,
    VocabAudit,
    WordTally,
    backend_of,
    corpus_texts,
    tally_words,
    tokenizer_kind,
)

log = logging.getLogger("mlmkit")


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
        """The extension as a JSON-ready dict (what was added, how, where it was saved)."""
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
        """One line for people: the words added and the tokens they save."""
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


def _choose(tally: WordTally, add: int, vocab: dict[str, int]) -> list[tuple[str, list]]:
    """The `add` forms that cost the most, costliest first (ties by form, for a stable pick)."""
    ranked = sorted(((f, e) for f, e in tally.forms.items() if f not in vocab),
                    key=lambda fe: (-fe[1][0] * (len(fe[1][1]) - 1), fe[0]))
    if not ranked:
        raise MlmkitError("the corpus has no word that the tokenizer splits into several pieces "
                          "as a whole word; there is nothing to add")
    if len(ranked) < add:
        log.warning("%s: the corpus has only %d words split into pieces; adding those",
                    named("add", add), len(ranked))
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
    for i in range(0, len(texts), BATCH):
        encs = backend.encode_batch(texts[i:i + BATCH], add_special_tokens=False)
        for enc, old in zip(encs, old_ids[i:i + BATCH]):
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
        raise MlmkitError(f"{named('add', add)}: expected a positive number of words to add")
    out = check_output_dir(output, overwrite=overwrite, inputs=read_paths(str(model), data),
                           resumable=False)
    tokenizer = load_tokenizer(str(model))
    kind, spec = tokenizer_kind(tokenizer)
    texts = corpus_texts(data, text_field, limit, split)
    old_ids: list[list[int]] = []
    before = tally_words(tokenizer, texts, old_ids)
    chosen = _choose(before, add, tokenizer.get_vocab())
    backend, new_ids = _extended_backend(tokenizer, spec, kind, [f for f, _ in chosen])
    extended = _wrap(tokenizer, backend)
    piece_ids = [tokenizer.convert_tokens_to_ids(e[1]) for _, e in chosen]
    changed = _changed_texts(backend_of(extended), texts, old_ids, dict(zip(new_ids, piece_ids)))
    weights = load_model(str(model))
    init_new_rows(weights, new_ids, piece_ids)
    added = [AddedWord(form, e[2], i, e[1], p, e[0], e[0] * (len(e[1]) - 1))
             for (form, e), i, p in zip(chosen, new_ids, piece_ids)]
    result = VocabExtension(str(out), str(model), kind, len(tokenizer), len(extended), added,
                            before.audit(top), tally_words(extended, texts).audit(top), changed)
    start_run_dir(out, overwrite=overwrite)
    write_model_dir(weights, extended, out,
                    {EXTENSION_FILE: {**result.to_dict(), "data": describe_source(data)}})
    return result
