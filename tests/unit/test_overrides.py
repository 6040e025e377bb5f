"""--config-overrides: each override is checked against the model config's own setting (its
name, the type of the value it replaces, the range its kind of setting has), and the changed
config must build and fit in memory, all before any data is read; the model's file checks
(a weight file's header against its size and the config's shapes) say what is wrong in one
line."""

from __future__ import annotations

import pytest

from mlmkit.config import TrainConfig
from mlmkit.errors import MlmkitError
from mlmkit.modeling.load import load_model, load_model_config
from mlmkit.modeling.overrides import apply_overrides
from mlmkit.settings import speaking_cli


@pytest.fixture
def config(roberta_shape):
    return load_model_config(str(roberta_shape), weights=False)  # hidden 32, 1 head, 2 layers


@pytest.mark.parametrize("text, needles", [
    ("hiden_size=64", ["--config-overrides hiden_size: roberta configs have no such shape "
                       "setting (did you mean hidden_size", "known: attention_probs_dropout"]),
    ("vocab_size=900", ["vocab_size: set by the tokenizer", "--train-tokenizer"]),
    ("return_dict=false", ["return_dict: roberta configs have no such shape setting"]),
    ("hidden_size=-3", ["hidden_size=-3: expected an integer >= 1"]),
    ("hidden_size=64.5", ["hidden_size=64.5: expected an integer, as the 32 it replaces"]),
    ("hidden_size=true", ["hidden_size=true: expected an integer"]),
    ("num_hidden_layers=0", ["num_hidden_layers=0: expected an integer >= 1"]),
    ("num_attention_heads=0", ["num_attention_heads=0: expected an integer >= 1"]),
    ("intermediate_size=4294967296", ["expected an integer >= 1 and <= 2147483647"]),
    ("hidden_dropout_prob=1.5", ["hidden_dropout_prob=1.5: expected a number >= 0 and <= 1"]),
    ("attention_probs_dropout_prob=-0.1", ["expected a number >= 0 and <= 1"]),
    ("layer_norm_eps=0", ["layer_norm_eps=0: expected a number > 0"]),
    ("layer_norm_eps=NaN", ["layer_norm_eps=NaN: expected a finite number"]),
    ("initializer_range=1e999", ["initializer_range=Infinity: expected a finite number"]),
    ("hidden_act=3", ["hidden_act=3: expected a string, as the 'gelu' it replaces"]),
    ("hidden_act=nonesuch", ["the model does not build: no such name 'nonesuch'"]),
    ("hidden_size=30,num_attention_heads=4", ["the model does not build", "30"]),
    ("hidden_size=2000000000", ["the model does not build: Storage size calculation overflowed"]),
    ("hidden_size=200000", ["parameters (", "GiB in float32) does not fit this machine's"]),
])
def test_bad_override_is_one_line_naming_it(config, text, needles):
    with speaking_cli(), pytest.raises(MlmkitError) as e:  # as `--config-overrides` names it
        apply_overrides(config, text)
    message = str(e.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message


def test_python_names_the_keyword(config):
    with pytest.raises(MlmkitError, match=r"^config_overrides='hidden_size=-3': expected an "
                                          "integer >= 1 "):
        apply_overrides(config, "hidden_size=-3")
    with pytest.raises(MlmkitError, match="train a tokenizer with train_tokenizer=...$"):
        apply_overrides(config, "vocab_size=900")


def test_good_overrides_keep_their_types_and_the_model_builds(config, roberta_shape):
    apply_overrides(config, "hidden_size=64,num_attention_heads=4,hidden_dropout_prob=0,"
                    "layer_norm_eps=1e-5,hidden_act=relu,classifier_dropout=0.2")
    assert (config.hidden_size, config.num_attention_heads, config.hidden_act) == (64, 4, "relu")
    assert type(config.hidden_dropout_prob) is float and config.hidden_dropout_prob == 0.0
    assert config.classifier_dropout == 0.2  # None before: any number in range
    model = load_model(str(roberta_shape), config, from_scratch=True)
    assert model.config.hidden_size == 64


def test_overrides_need_a_model_built_from_scratch():
    with pytest.raises(MlmkitError, match="config_overrides: only with from_scratch=True"):
        TrainConfig(data="x", config_overrides="hidden_size=64")
    with pytest.raises(MlmkitError, match="expected key=value pairs"):
        TrainConfig(data="x", from_scratch=True, config_overrides="hidden_size")
    assert TrainConfig(data="x", train_tokenizer=200, config_overrides="hidden_size=64")
