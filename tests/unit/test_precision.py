"""The int8 precision (per-channel int8 weights, per-token int8 activations) and the one
`dtype` setting that picks a precision for fill, score, the server and batch jobs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mlmkit import FillMask, Scorer
from mlmkit.errors import MlmkitError
from mlmkit.modeling.precision import (
    Int8Linear,
    apply_precision,
    check_precision,
    precision_of,
    quantize_int8,
)
from mlmkit.settings import speaking_cli


def _reference_int8(x: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    """W8A8 computed independently in float64: each weight row and each input row quantized to
    [-127, 127] with its own absmax scale, multiplied, rescaled, plus the bias."""
    w = linear.weight.double()
    sw = w.abs().amax(1, keepdim=True) / 127
    qw = torch.clamp(torch.round(w / sw), -127, 127)
    rows = x.reshape(-1, x.shape[-1]).double()
    sx = rows.abs().amax(1, keepdim=True) / 127
    qx = torch.clamp(torch.round(rows / sx), -127, 127)
    y = (qx @ qw.T) * sx * sw.T + linear.bias.double()
    return y.reshape(*x.shape[:-1], -1)


def test_int8_linear_is_per_channel_per_token_w8a8():
    torch.manual_seed(0)
    lin = nn.Linear(96, 40)
    # Rows and channels of very different sizes: one scale for all would lose the small ones.
    with torch.no_grad():
        lin.weight.mul_(torch.logspace(-2, 1, 40)[:, None])
    x = torch.randn(3, 7, 96) * torch.logspace(-3, 2, 7)[None, :, None]
    got = Int8Linear(lin)(x)
    assert got.shape == (3, 7, 40) and got.dtype == torch.float32
    ref = _reference_int8(x, lin)
    # float32 rounding may put a value on the other side of a .5 now and then: row by row
    off = (got.double() - ref).abs().amax(-1) / ref.abs().amax(-1)
    assert off.max() < 2e-3
    # ... and close to the float layer, row by row (relative to each row's size)
    exact = lin(x).double()
    err = (got.double() - exact).abs().amax(-1) / exact.abs().amax(-1)
    assert err.max() < 0.05


def test_quantize_int8_replaces_every_linear_once_and_keeps_ties():
    torch.manual_seed(0)
    shared = nn.Linear(8, 8)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), shared, nn.Sequential(shared))
    assert quantize_int8(model) == 2
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    assert model[2] is model[3][0]
    assert precision_of(model) == "int8"
    # applying int8 again leaves an int8 model as it is
    first = model[0]
    assert apply_precision(model, torch.device("cpu"), "int8")[0] is first


def test_precision_is_checked_against_the_device_in_the_callers_words():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert check_precision("auto", cpu) == "float32"
    assert check_precision("auto", cuda) == "bfloat16"
    assert check_precision("bf16", cpu) == "bfloat16"
    with pytest.raises(MlmkitError, match=r"^dtype='int8': int8 runs on a CPU only"):
        check_precision("int8", cuda)
    with speaking_cli(), pytest.raises(MlmkitError, match=r"^--dtype int8: int8 runs on a CPU"):
        check_precision("int8", cuda)
    with pytest.raises(MlmkitError, match=r"dtype='int4': expected auto, float32, .*int8"):
        check_precision("int4", cpu)


def test_int8_agrees_with_float32_on_the_real_model(splade, masked_eli5):
    """On the real bert-tiny-splade, int8 picks float32's top candidate for nearly every mask,
    and where it does not, float32's own top two were nearly tied."""
    sentences = masked_eli5
    assert len(sentences) >= 100
    ref = FillMask(str(splade), dtype="float32")(sentences, top_k=5)
    int8 = FillMask(str(splade), dtype="int8")
    assert int8.precision == "int8" and precision_of(int8.model) == "int8"
    got = int8(sentences, top_k=5)
    flips = [r for r, g in zip(ref, got) if r[0]["token"] != g[0]["token"]]
    assert len(flips) <= 0.1 * len(sentences)
    assert all(r[0]["score"] - r[1]["score"] < 0.01 for r in flips)
    top5 = sum(len({a["token"] for a in r} & {b["token"] for b in g}) for r, g in zip(ref, got))
    assert top5 >= 0.85 * 5 * len(sentences)
    # the records are the pipeline's: the strings decode the same candidates the same way
    for r, g in zip(ref, got):
        by_token = {a["token"]: a for a in r}
        for b in g:
            if b["token"] in by_token:
                a = by_token[b["token"]]
                assert (a["token_str"], a["sequence"]) == (b["token_str"], b["sequence"])
                assert abs(a["score"] - b["score"]) < 0.05


def test_int8_scores_close_to_float32_and_shares_the_fill_engines_model(splade):
    texts = ["The cat sat on the mat.", "Colorless green ideas sleep furiously.",
             "A bank is where people keep their money."]
    ref = Scorer(str(splade))(texts)
    fm = FillMask(str(splade), dtype="int8")
    scorer = Scorer(fm.model, fm.tokenizer, dtype=fm.precision)
    assert scorer.model is fm.model and scorer.precision == "int8"
    got = scorer(texts)
    for r, g in zip(ref, got):
        assert g["tokens"] == r["tokens"]
        assert abs(g["pll"] - r["pll"]) < 0.05 * abs(r["pll"])
    # the ranking of the three sentences is float32's
    assert sorted(range(3), key=lambda i: got[i]["pll"]) == sorted(range(3),
                                                                   key=lambda i: ref[i]["pll"])


def test_int8_leaves_a_model_object_it_was_given_as_it_was(tiny_bert):
    """A model passed in (one being trained, say) is quantized as a copy: its own layers and
    outputs are unchanged."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    model = AutoModelForMaskedLM.from_pretrained(tiny_bert)
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    ids = tok("The cat sat on the [MASK].", return_tensors="pt")["input_ids"]
    before = model(ids).logits.detach().clone()
    engine = FillMask(model, tok, device="cpu", dtype="int8")
    assert engine.model is not model and precision_of(engine.model) == "int8"
    assert precision_of(model) == "float32"
    assert torch.equal(model(ids).logits.detach(), before)


def test_float_engines_on_a_cpu_run_onednn_packed_linears_with_float32_numbers(tiny_bert):
    """A float32 engine's linear layers are oneDNN-packed: float32 to rounding (against a
    float64 reference, as close as F.linear), copyable, and plain again when the model is
    wanted in another precision."""
    import copy

    from mlmkit.modeling.precision import PackedLinear, pack_linears

    torch.manual_seed(0)
    lin = nn.Linear(300, 70)
    x = torch.randn(4, 9, 300)
    ref = torch.nn.functional.linear(x.double(), lin.weight.double(), lin.bias.double())
    with torch.inference_mode():
        packed = PackedLinear(lin)
        got, plain = packed(x), lin(x)
        assert (got.double() - ref).abs().max() <= 4 * (plain.double() - ref).abs().max() + 1e-6
        assert torch.equal(copy.deepcopy(packed)(x), got)
    engine = FillMask(str(tiny_bert), device="cpu")
    layers = [m for m in engine.model.modules() if isinstance(m, PackedLinear)]
    assert layers and not any(type(m) is nn.Linear for m in engine.model.modules())
    assert pack_linears(engine.model) == 0  # nothing left to pack
    bf16 = FillMask(engine.model, engine.tokenizer, device="cpu", dtype="bfloat16")
    assert not any(isinstance(m, PackedLinear) for m in bf16.model.modules())
    assert precision_of(bf16.model) == "bfloat16"
