"""Masking follows BERT's recipe statistically (15%, 80/10/10), never touches special or padding
tokens, keeps whole words together (BPE, WordPiece, SentencePiece), and fixes eval masks by seed.
"""

from __future__ import annotations

import numpy as np
import pytest

from mlmkit.config import MaskConfig
from mlmkit.corpus.masking import IGNORE_INDEX, Masker, MaskingCollator, sparse_targets

BLOCK = 128


def encode_blocks(tokenizer, texts, n_blocks, block=BLOCK, pad_every=4, pad_len=16):
    """Blocks of real tokens (with <s>/</s> or [CLS]/[SEP] between documents), plus (doc, word)
    ids per position; every `pad_every`-th block ends in padding."""
    ids, words = [], []
    for d, t in enumerate(texts):
        enc = tokenizer(t)
        ids += enc["input_ids"]
        words += [(d, w) if w is not None else None for w in enc.word_ids()]
        if len(ids) >= n_blocks * block:
            break
    assert len(ids) >= n_blocks * block, "not enough text for the requested blocks"
    ids = np.array(ids[: n_blocks * block], dtype=np.int64).reshape(n_blocks, block)
    words = words[: n_blocks * block]
    if pad_every:
        ids[::pad_every, -pad_len:] = tokenizer.pad_token_id
    return ids, words


@pytest.fixture(scope="module")
def roberta_blocks(roberta_tokenizer, sample_texts):
    return encode_blocks(roberta_tokenizer, sample_texts, 900)  # 115k tokens


def test_selection_and_80_10_10_statistics(roberta_tokenizer, roberta_blocks):
    tok = roberta_tokenizer
    ids, _ = roberta_blocks
    inputs, labels = Masker(tok, MaskConfig())(ids, np.random.default_rng(0))
    special = np.isin(ids, tok.all_special_ids)
    assert special.sum() > 1000 and (ids == tok.pad_token_id).sum() > 1000
    selected = labels != IGNORE_INDEX
    assert abs(selected.sum() / (~special).sum() - 0.15) <= 0.01
    n = selected.sum()
    masked = selected & (inputs == tok.mask_token_id)
    kept = selected & (inputs == ids)
    randomised = selected & ~masked & ~kept
    assert abs(masked.sum() / n - 0.8) <= 0.01
    assert abs(randomised.sum() / n - 0.1) <= 0.01
    assert abs(kept.sum() / n - 0.1) <= 0.01
    # Random replacements are ordinary tokens, and nothing outside the selection changes.
    assert not np.isin(inputs[randomised], tok.all_special_ids).any()
    assert np.array_equal(inputs[~selected], ids[~selected])


@pytest.mark.parametrize("kind", ["roberta", "bert", "sentencepiece"])
def test_specials_and_padding_never_selected_labels_exact(kind, request, sample_texts):
    tok = request.getfixturevalue(f"{kind}_tokenizer")
    ids, _ = encode_blocks(tok, sample_texts, 200)
    cfg = MaskConfig(mlm_probability=0.9)  # high, so a leak would certainly show
    inputs, labels = Masker(tok, cfg)(ids, np.random.default_rng(1))
    special = np.isin(ids, tok.all_special_ids) | (ids == tok.pad_token_id)
    selected = labels != IGNORE_INDEX
    assert not (selected & special).any()
    assert np.array_equal(inputs[special], ids[special])
    assert np.array_equal(labels[selected], ids[selected])  # labels are the original ids
    assert (labels[~selected] == IGNORE_INDEX).all()
    assert selected.mean() > 0.5


def word_groups(ids, words):
    """Positions of each word (split by block as well: a block starts a new word)."""
    groups: dict = {}
    for pos, w in enumerate(words):
        if w is not None:
            b, p = divmod(pos, ids.shape[1])
            groups.setdefault((b, w), []).append((b, p))
    return [g for g in groups.values()]


@pytest.mark.parametrize("kind", ["roberta", "bert", "sentencepiece"])
def test_whole_word_masking_selects_all_or_none(kind, request, sample_texts):
    tok = request.getfixturevalue(f"{kind}_tokenizer")
    ids, words = encode_blocks(tok, sample_texts, 300, pad_every=0)
    groups = [g for g in word_groups(ids, words) if len(g) > 1]
    assert len(groups) > 1000  # the tiny vocabulary splits many words

    def mixed(selected):
        return sum(len({bool(selected[b, p]) for b, p in g}) > 1 for g in groups)

    def fully(selected):
        return sum(all(selected[b, p] for b, p in g) for g in groups)

    rng = np.random.default_rng(2)
    wwm = Masker(tok, MaskConfig(whole_word_mask=True)).select(ids, rng)
    assert mixed(wwm) == 0 and fully(wwm) > 50
    assert abs(wwm.mean() - 0.15) < 0.03
    # The check has teeth: token-level masking splits words.
    tokens = Masker(tok, MaskConfig()).select(ids, np.random.default_rng(2))
    assert mixed(tokens) > 100


def test_fixed_eval_masks_reproducible_and_chunk_independent(roberta_tokenizer, roberta_blocks):
    ids = roberta_blocks[0][:300]
    masker = Masker(roberta_tokenizer, MaskConfig())
    a_in, a_lab = masker.fixed(ids, seed=1234)
    b_in, b_lab = masker.fixed(ids, seed=1234)
    c_in, c_lab = masker.fixed(ids, seed=1234, chunk=7)
    d_in, d_lab = masker.fixed(ids, seed=99)
    assert np.array_equal(a_in, b_in) and np.array_equal(a_lab, b_lab)
    assert np.array_equal(a_in, c_in) and np.array_equal(a_lab, c_lab)
    assert not np.array_equal(a_lab, d_lab)
    assert (a_lab != IGNORE_INDEX).sum() > 0


def test_collator_masks_depend_only_on_seed_epoch_and_blocks(roberta_tokenizer, roberta_blocks):
    tok = roberta_tokenizer
    ids = roberta_blocks[0][:8]
    ids = np.where(ids == tok.pad_token_id, tok.convert_tokens_to_ids("Ġthe"), ids)  # full blocks
    col = MaskingCollator(Masker(tok, MaskConfig()), seed=5, pad_id=tok.pad_token_id)
    items = [(0, i, ids[i]) for i in range(8)]
    a, b = col(items), col(items)
    assert a.keys() == b.keys() == {"input_ids", "labels"}  # no padding: no attention mask
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["labels"], col([(1, i, ids[i]) for i in range(8)])["labels"])
    padded = ids.copy()
    padded[3, 50:] = tok.pad_token_id
    c = col([(0, i, padded[i]) for i in range(8)])
    assert np.array_equal(c["attention_mask"].numpy(), (padded != tok.pad_token_id).astype(int))
    assert (c["labels"][3, 50:] == IGNORE_INDEX).all()  # padding is never predicted


def test_sparse_targets_list_every_label_once_padded_to_the_multiple(roberta_tokenizer,
                                                                    roberta_blocks):
    ids = roberta_blocks[0][:8]
    col = MaskingCollator(Masker(roberta_tokenizer, MaskConfig()), seed=5,
                          pad_id=roberta_tokenizer.pad_token_id, sparse_multiple=64)
    batch = col([(0, i, ids[i]) for i in range(8)])
    labels = batch["labels"].numpy()
    index, targets = batch["masked_index"].numpy(), batch["masked_labels"].numpy()
    n = int((labels != IGNORE_INDEX).sum())
    assert len(index) == len(targets) and len(index) % 64 == 0 and n <= len(index) < n + 64
    real = targets != IGNORE_INDEX
    assert real.sum() == n and real[:n].all()  # labels first, padding after
    assert np.array_equal(index[:n], np.flatnonzero(labels.reshape(-1) != IGNORE_INDEX))
    assert np.array_equal(targets[:n], labels.reshape(-1)[index[:n]])
    assert (index[n:] == 0).all()
    assert sparse_targets(np.full((2, 4), IGNORE_INDEX), 8)[0].shape == (8,)  # never empty


@pytest.mark.parametrize("whole_word", [False, True])
def test_line_by_line_padding_is_never_predicted_and_never_attended(
        distilroberta_tokenizer, sample_texts, whole_word):
    from mlmkit.config import DataConfig
    from mlmkit.corpus.blocks import load_blocks
    from mlmkit.training.perplexity import fixed_eval_dataset

    tok = distilroberta_tokenizer
    lines = [s for t in sample_texts[:200] for s in t.split(". ")]  # many short lines
    corpus = load_blocks(DataConfig(data=lines, block_size=64, line_by_line=True, no_cache=True),
                         tok, progress=False)
    blocks = np.array(corpus.train)
    pad = blocks == tok.pad_token_id
    assert pad.mean() > 0.3 and pad.all(axis=1).sum() == 0  # mostly padding, no empty block
    cfg = MaskConfig(mlm_probability=0.5, whole_word_mask=whole_word)  # a leak would show
    col = MaskingCollator(Masker(tok, cfg), seed=3, pad_id=tok.pad_token_id)
    predicted = 0
    for start in range(0, len(blocks), 64):
        rows = range(start, min(start + 64, len(blocks)))
        batch = col([(0, i, blocks[i]) for i in rows])
        labels, sel_pad = batch["labels"].numpy(), pad[list(rows)]
        assert (labels[sel_pad] == IGNORE_INDEX).all()
        assert (batch["input_ids"].numpy()[sel_pad] == tok.pad_token_id).all()
        assert np.array_equal(batch["attention_mask"].numpy(), (~sel_pad).astype(np.int64))
        predicted += int((labels != IGNORE_INDEX).sum())
    assert predicted > 0.3 * (~pad).sum()  # masking did happen, at about half the real tokens
    # The fixed evaluation masks too: padding gets no label and no attention.
    ds = fixed_eval_dataset(blocks[:200], tok, cfg)
    for i in range(len(ds)):
        item = ds[i]
        assert (item["labels"].numpy()[pad[i]] == IGNORE_INDEX).all()
        assert np.array_equal(item["attention_mask"].numpy(), (~pad[i]).astype(np.int64))
