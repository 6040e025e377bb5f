"""The keras-hub weight mapping is exact: HF -> Keras -> HF gives back every tensor, and the
Keras model's logits equal the Hugging Face model's, for BERT, RoBERTa and DistilBERT."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from mlmkit.errors import MlmkitError
from mlmkit.modeling.keras.convert import (
    family_module,
    hf_state,
    import_keras,
    keras_inputs,
    to_hf,
    to_keras,
    uses_segments,
)

try:
    import_keras()
except MlmkitError as e:
    pytest.skip(f"keras / keras-hub not installed: {e}", allow_module_level=True)


def tiny_hf(kind: str, seed: int = 0):
    """A small random masked LM whose LayerNorms and biases are not at their init values, so a
    mapping that swapped gamma/beta or dropped a bias would show."""
    import transformers as T

    common = dict(vocab_size=300, num_attention_heads=4)
    cfg = {"bert": T.BertConfig(hidden_size=32, num_hidden_layers=2, intermediate_size=64,
                                **common),
           # layer_norm_eps 1e-12 is RobertaConfig's default; real RoBERTa's is 1e-5.
           "roberta": T.RobertaConfig(hidden_size=32, num_hidden_layers=2, intermediate_size=64,
                                      pad_token_id=1, type_vocab_size=1,
                                      max_position_embeddings=66, layer_norm_eps=1e-5,
                                      **common),
           "distilbert": T.DistilBertConfig(dim=32, n_layers=2, hidden_dim=64,
                                            vocab_size=300, n_heads=4)}[kind]
    torch.manual_seed(seed)
    model = T.AutoModelForMaskedLM.from_config(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 or "token_type" in name:
                p.add_(torch.randn_like(p) * 0.2)
    return model


def kept_by_hf(kind: str) -> set[str]:
    """Tensors Keras has no variable for, which the way back takes from the target model."""
    return {"roberta.embeddings.token_type_embeddings.weight"} if kind == "roberta" else set()


@pytest.mark.parametrize("kind", ["bert", "roberta", "distilbert"])
def test_round_trip_returns_every_tensor(kind):
    hf = tiny_hf(kind)
    km = to_keras(hf)
    # The target starts from zeros wherever Keras holds the value: every such tensor must come
    # back from Keras, not stay behind from a copy.
    target = copy.deepcopy(hf)
    keep = kept_by_hf(kind)
    with torch.no_grad():
        for name, t in target.state_dict().items():
            if name in keep:
                continue
            if name.endswith("position_embeddings.weight") and kind == "roberta":
                t[2:] = 0  # rows 0 and 1 are RoBERTa's reserved ones, never used for a token
            else:
                t.zero_()
    to_hf(km, target)
    before, after = hf_state(hf), hf_state(target)
    assert before.keys() == after.keys()
    worst = {k: float(np.abs(before[k] - after[k]).max()) for k in before}
    assert max(worst.values()) <= 1e-6, {k: v for k, v in worst.items() if v > 1e-6}


@pytest.mark.parametrize("kind", ["bert", "roberta", "distilbert"])
def test_keras_logits_equal_hf_logits_with_padding(kind):
    hf = tiny_hf(kind, seed=1)
    km = to_keras(hf)
    pad = hf.config.pad_token_id or 0
    ids = np.random.default_rng(0).integers(5, 300, (3, 20))
    ids[2, 13:] = pad  # a padded row: attention must ignore the padding
    mask = ids != pad
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask.astype(int))
                 ).logits.numpy()
    positions = np.tile(np.arange(20), (3, 1))
    out = np.asarray(km.predict_on_batch(keras_inputs(ids, mask, positions, uses_segments(km))))
    assert out.shape == ref.shape
    assert np.abs(out - ref)[mask].max() < 1e-5


def test_exact_gelu_and_head_epsilon_are_what_make_bert_match():
    """Without the two fixes (keras-hub's tanh GELU, head epsilon 1e-5) BERT's logits drift:
    the fixes are load-bearing, not decoration."""
    import keras

    hf = tiny_hf("bert", seed=2)
    km = to_keras(hf)
    ids = np.random.default_rng(1).integers(5, 300, (2, 16))
    x = keras_inputs(ids, np.ones_like(ids), np.tile(np.arange(16), (2, 1)), True)
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids)).logits.numpy()
    exact = np.abs(np.asarray(km.predict_on_batch(x)) - ref).max()
    def approx(v):  # keras-hub's own choice for BERT
        return keras.activations.gelu(v, approximate=True)

    # A fresh model: on the TF backend predict_on_batch traces a graph once, so changing the
    # layers of `km` after its first call would not be seen.
    km = to_keras(hf)
    for layer in km.backbone.transformer_layers:
        layer._feedforward_intermediate_dense.activation = approx
    km.masked_lm_head._intermediate_layer_norm.epsilon = 1e-5
    off = np.abs(np.asarray(km.predict_on_batch(x)) - ref).max()
    assert exact < 1e-5 < off


def test_real_bert_tiny_splade_fill_mask_top5_equals_pipeline(splade):
    """The real pretrained BERT-tiny: Keras' top-5 at the mask equals transformers.pipeline."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline

    tok = AutoTokenizer.from_pretrained(str(splade))
    hf = AutoModelForMaskedLM.from_pretrained(str(splade)).eval()
    km = to_keras(hf)
    text = "The Milky Way is a [MASK] galaxy."
    want = pipeline("fill-mask", model=hf, tokenizer=tok, top_k=5)(text)
    ids = np.array([tok(text)["input_ids"]])
    at = int(np.flatnonzero(ids[0] == tok.mask_token_id)[0])
    logits = np.asarray(km.predict_on_batch(keras_inputs(ids, np.ones_like(ids),
                                                         np.array([[at]]), True)))[0, 0]
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    top = np.argsort(-probs)[:5]
    assert [int(t) for t in top] == [r["token"] for r in want]
    assert np.allclose(probs[top], [r["score"] for r in want], atol=1e-6)


def test_unsupported_architecture_names_the_supported_ones():
    from transformers import ElectraConfig

    with pytest.raises(MlmkitError, match="not supported; supported: bert, roberta, distilbert"):
        family_module(ElectraConfig())


def test_untied_decoder_is_refused():
    hf = tiny_hf("bert")
    hf.config.tie_word_embeddings = False
    with pytest.raises(MlmkitError, match="tie_word_embeddings"):
        to_keras(hf)
