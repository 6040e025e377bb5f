"""DistilBERT masked LMs (`DistilBertForMaskedLM`) <-> keras-hub's `DistilBertMaskedLM`.
Tested with keras-hub 0.32.0.
"""

from __future__ import annotations

from typing import Any

from mlmkit.modeling.keras.bert import dense_ties, head_ties, norm_ties
from mlmkit.modeling.keras.convert import Tie, match_hf_layers, require_tied

# DistilBERT's LayerNorms use 1e-12 whatever the config says (transformers' modeling code).
EPSILON = 1e-12


def check_config(config: Any) -> None:
    require_tied(config)


def build(config: Any) -> Any:
    import keras_hub

    backbone = keras_hub.models.DistilBertBackbone(
        vocabulary_size=config.vocab_size, num_layers=config.n_layers, num_heads=config.n_heads,
        hidden_dim=config.dim, intermediate_dim=config.hidden_dim, dropout=config.dropout,
        max_sequence_length=config.max_position_embeddings)
    model = keras_hub.models.DistilBertMaskedLM(backbone, preprocessor=None)
    match_hf_layers(model, config.activation, config.activation, EPSILON)
    return model


def ties(config: Any, model: Any) -> list[Tie]:
    b = model.backbone
    embeddings = b.get_layer("token_and_position_embedding")
    found = [
        Tie("distilbert.embeddings.word_embeddings.weight",
            embeddings.token_embedding.embeddings),
        Tie("distilbert.embeddings.position_embeddings.weight",
            embeddings.position_embedding.position_embeddings),
        *norm_ties("distilbert.embeddings.LayerNorm", b.embeddings_layer_norm),
    ]
    for i, layer in enumerate(b.transformer_layers):
        p, attn = f"distilbert.transformer.layer.{i}", layer._self_attention_layer
        found += [
            *dense_ties(f"{p}.attention.q_lin", attn.query_dense),
            *dense_ties(f"{p}.attention.k_lin", attn.key_dense),
            *dense_ties(f"{p}.attention.v_lin", attn.value_dense),
            *dense_ties(f"{p}.attention.out_lin", attn.output_dense),
            *norm_ties(f"{p}.sa_layer_norm", layer._self_attention_layer_norm),
            *dense_ties(f"{p}.ffn.lin1", layer._feedforward_intermediate_dense),
            *dense_ties(f"{p}.ffn.lin2", layer._feedforward_output_dense),
            *norm_ties(f"{p}.output_layer_norm", layer._feedforward_layer_norm),
        ]
    return found + head_ties(model.masked_lm_head, "vocab_transform", "vocab_layer_norm",
                             "vocab_projector.bias")
