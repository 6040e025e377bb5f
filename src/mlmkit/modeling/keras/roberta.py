"""RoBERTa masked LMs (`RobertaForMaskedLM`: RoBERTa, DistilRoBERTa) <-> keras-hub's
`RobertaMaskedLM`. Tested with keras-hub 0.32.0.

RoBERTa numbers positions from padding_idx + 1 (rows 0 and 1 of its table are never used for
a real token) and adds a one-row token-type embedding to every token; keras-hub's RoBERTa has
positions from 0 and no token types. So Keras position row p holds HF row p + offset plus the
token-type row, and the way back subtracts it again.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mlmkit.modeling.keras.bert import encoder_ties, head_ties, norm_ties
from mlmkit.modeling.keras.convert import Tie, keras_refusal, match_hf_layers, require_tied

POSITIONS = "roberta.embeddings.position_embeddings.weight"
TOKEN_TYPES = "roberta.embeddings.token_type_embeddings.weight"


def offset_of(config: Any) -> int:
    return (config.pad_token_id if config.pad_token_id is not None else 1) + 1


def check_config(config: Any) -> None:
    if getattr(config, "position_embedding_type", "absolute") != "absolute":
        raise keras_refusal(f"position_embedding_type "
                          f"{config.position_embedding_type!r}; keras-hub's RoBERTa has "
                          "absolute positions only")
    if config.type_vocab_size != 1:
        raise keras_refusal(f"type_vocab_size {config.type_vocab_size}; "
                          "keras-hub's RoBERTa has no token types (RoBERTa's own: 1)")
    require_tied(config)


def build(config: Any) -> Any:
    import keras_hub

    backbone = keras_hub.models.RobertaBackbone(
        vocabulary_size=config.vocab_size, num_layers=config.num_hidden_layers,
        num_heads=config.num_attention_heads, hidden_dim=config.hidden_size,
        intermediate_dim=config.intermediate_size, dropout=config.hidden_dropout_prob,
        max_sequence_length=config.max_position_embeddings - offset_of(config))
    model = keras_hub.models.RobertaMaskedLM(backbone, preprocessor=None)
    # RobertaLMHead applies transformers' exact gelu whatever hidden_act says.
    match_hf_layers(model, config.hidden_act, "gelu", config.layer_norm_eps)
    return model


def ties(config: Any, model: Any) -> list[Tie]:
    b, offset = model.backbone, offset_of(config)

    def positions_to_keras(state: dict[str, np.ndarray]) -> np.ndarray:
        return state[POSITIONS][offset:] + state[TOKEN_TYPES][0]

    def positions_to_hf(value: np.ndarray, state: dict[str, np.ndarray]) -> np.ndarray:
        rows = state[POSITIONS].copy()
        rows[offset:] = value - state[TOKEN_TYPES][0]
        return rows

    return [
        Tie("roberta.embeddings.word_embeddings.weight", b.token_embedding.embeddings),
        Tie(POSITIONS, b.embeddings.position_embedding.position_embeddings,
            to_keras=positions_to_keras, to_hf=positions_to_hf),
        *norm_ties("roberta.embeddings.LayerNorm", b.embeddings_layer_norm),
        *encoder_ties(b, "roberta.encoder"),
        *head_ties(model.masked_lm_head, "lm_head.dense", "lm_head.layer_norm", "lm_head.bias"),
    ]
