"""BERT masked LMs (`BertForMaskedLM`) <-> keras-hub's `BertMaskedLM`: the table of weights,
and the encoder-layer part of it that RoBERTa shares. Tested with keras-hub 0.32.0.
"""

from __future__ import annotations

from typing import Any

from mlmkit.modeling.keras.convert import Tie, keras_refusal, match_hf_layers, require_tied


def check_config(config: Any) -> None:
    """What keras-hub's BERT cannot represent, refused by name rather than converted wrong."""
    if getattr(config, "position_embedding_type", "absolute") != "absolute":
        raise keras_refusal(f"position_embedding_type "
                          f"{config.position_embedding_type!r}; keras-hub's BERT has absolute "
                          "positions only")
    require_tied(config)


def build(config: Any) -> Any:
    import keras_hub

    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=config.vocab_size, num_layers=config.num_hidden_layers,
        num_heads=config.num_attention_heads, hidden_dim=config.hidden_size,
        intermediate_dim=config.intermediate_size, dropout=config.hidden_dropout_prob,
        max_sequence_length=config.max_position_embeddings,
        num_segments=config.type_vocab_size)
    # The backbone's pooler (a dense layer on [CLS] for next-sentence prediction) feeds no
    # masked-LM output and has no tensor in BertForMaskedLM: frozen, it is not trained (its
    # gradient is none, which Keras would warn about at every step) and not converted.
    backbone.pooled_dense.trainable = False
    model = keras_hub.models.BertMaskedLM(backbone, preprocessor=None)
    match_hf_layers(model, config.hidden_act, config.hidden_act, config.layer_norm_eps)
    return model


def encoder_ties(backbone: Any, prefix: str) -> list[Tie]:
    """The transformer layers of BERT and RoBERTa (same layout), `prefix` e.g. 'bert.encoder'."""
    ties = []
    for i, layer in enumerate(backbone.transformer_layers):
        p, attn = f"{prefix}.layer.{i}", layer._self_attention_layer
        for name, dense in (("query", attn.query_dense), ("key", attn.key_dense),
                            ("value", attn.value_dense)):
            ties += [Tie(f"{p}.attention.self.{name}.weight", dense.kernel, transpose=True),
                     Tie(f"{p}.attention.self.{name}.bias", dense.bias)]
        ties += [
            Tie(f"{p}.attention.output.dense.weight", attn.output_dense.kernel, transpose=True),
            Tie(f"{p}.attention.output.dense.bias", attn.output_dense.bias),
            *norm_ties(f"{p}.attention.output.LayerNorm", layer._self_attention_layer_norm),
            *dense_ties(f"{p}.intermediate.dense", layer._feedforward_intermediate_dense),
            *dense_ties(f"{p}.output.dense", layer._feedforward_output_dense),
            *norm_ties(f"{p}.output.LayerNorm", layer._feedforward_layer_norm),
        ]
    return ties


def dense_ties(hf_prefix: str, dense: Any) -> list[Tie]:
    return [Tie(f"{hf_prefix}.weight", dense.kernel, transpose=True),
            Tie(f"{hf_prefix}.bias", dense.bias)]


def norm_ties(hf_prefix: str, norm: Any) -> list[Tie]:
    return [Tie(f"{hf_prefix}.weight", norm.gamma), Tie(f"{hf_prefix}.bias", norm.beta)]


def head_ties(head: Any, dense: str, norm: str, bias: str) -> list[Tie]:
    """keras-hub's MaskedLMHead: dense, LayerNorm, the tied embedding, an output bias."""
    return [*dense_ties(dense, head._intermediate_dense),
            *norm_ties(norm, head._intermediate_layer_norm), Tie(bias, head._bias)]


def ties(config: Any, model: Any) -> list[Tie]:
    b = model.backbone
    return [
        Tie("bert.embeddings.word_embeddings.weight", b.token_embedding.embeddings),
        Tie("bert.embeddings.position_embeddings.weight",
            b.position_embedding.position_embeddings),
        Tie("bert.embeddings.token_type_embeddings.weight", b.segment_embedding.embeddings),
        *norm_ties("bert.embeddings.LayerNorm", b.embeddings_layer_norm),
        *encoder_ties(b, "bert.encoder"),
        *head_ties(model.masked_lm_head, "cls.predictions.transform.dense",
                   "cls.predictions.transform.LayerNorm", "cls.predictions.bias"),
    ]
