"""StreamingT2V acceleration (``streaming_t2v_core.acceleration``): the fused q/k/v self-attention and
torch.compile give the plain model's eps, stay correct after weight edits and leave the state dict alone."""
from __future__ import annotations

import copy

import pytest
import torch
from st2v_tiny import tiny_inputs, tiny_st2v_model

from streaming_t2v_core.apm import APMAttnProcessor

from streaming_t2v_core.acceleration import ACCELERATIONS, FusedSelfAttnProcessor, mark_weights_changed, optimize

T = 501


def _eps(model, inputs):
    lat, text, image, frames = inputs
    dtype = model.dtype
    return model(lat.to(dtype), T, text.to(dtype), image.to(dtype), frames.to(dtype))


def _fused_processors(model):
    return [m.processor for m in model.modules() if "Fused" in type(getattr(m, "processor", None)).__name__]


def _fused_attentions(model):
    return [m for m in model.modules() if "Fused" in type(getattr(m, "processor", None)).__name__]


@pytest.fixture(scope="module")
def inputs():
    return tiny_inputs(1, seed=4)


@torch.no_grad()
def test_fused_and_compiled_model_equal_the_plain_one():
    inputs = tiny_inputs(2, seed=4)  # a CFG-sized batch
    ref = _eps(tiny_st2v_model(0).double(), inputs)
    fast = optimize(tiny_st2v_model(0).double())
    processors = [m.processor for m in fast.modules() if hasattr(m, "processor")]
    assert len(_fused_processors(fast)) > 0
    assert sum(isinstance(p, APMAttnProcessor) for p in processors) > 0  # the APM cross-attentions are kept
    torch.testing.assert_close(_eps(fast, inputs), ref, atol=1e-10, rtol=0)
    compiled = optimize(tiny_st2v_model(0).double(), "compile", compile_options={"backend": "eager"})
    torch.testing.assert_close(_eps(compiled, inputs), ref, atol=1e-10, rtol=0)
    assert not [k for k in compiled.state_dict() if "_orig_mod" in k]


@torch.no_grad()
def test_fused_path_runs_one_projection(inputs, monkeypatch):
    """The fused processors really take the one-matmul path (not their unfused fallback) in an eps call."""
    fast = optimize(tiny_st2v_model(0).double())
    attns = _fused_attentions(fast)
    calls = []
    for attn in attns:  # the separate projections must not run on the fused path
        for name in ("to_q", "to_k", "to_v"):
            getattr(attn, name).register_forward_hook(lambda *a, n=name: calls.append(n))
    _eps(fast, inputs)
    assert attns and not calls


@torch.no_grad()
def test_state_dict_keys_are_exactly_the_unfused_keys():
    plain = tiny_st2v_model(0)
    expected = plain.state_dict()
    for fast in (optimize(tiny_st2v_model(0)), optimize(tiny_st2v_model(0), "compile",
                                                        compile_options={"backend": "eager"})):
        _eps(fast, tiny_inputs(1, seed=1))  # the fused weights exist now
        got = fast.state_dict()
        assert list(got) == list(expected)
        assert all(torch.equal(got[k], v) for k, v in expected.items())
        assert not [n for n, _ in fast.named_parameters() if n not in expected]
        assert not [n for n, _ in fast.named_buffers() if n not in expected and "fused" not in n]


@torch.no_grad()
@pytest.mark.parametrize("compiled", [False, True])
def test_fused_path_follows_in_place_weight_edits(inputs, compiled):
    """An in-place edit of to_q/to_k/to_v (a LoRA merge, a hand edit) after the fused weights were built is seen by
    the next call: the fused model equals the plain model with the same edit."""
    plain = tiny_st2v_model(0).double()
    fast = copy.deepcopy(plain)
    optimize(fast, "compile" if compiled else "fused", compile_options={"backend": "eager"})
    torch.testing.assert_close(_eps(fast, inputs), _eps(plain, inputs), atol=1e-10, rtol=0)  # fused weights built
    g = torch.Generator().manual_seed(5)
    names = [n for n, m in fast.named_modules() if m in set(_fused_attentions(fast))]
    assert names
    for n in names:
        for proj in ("to_q", "to_k", "to_v"):
            delta = torch.randn(getattr(plain.get_submodule(n), proj).weight.shape, generator=g,
                                dtype=torch.float64) * 0.05
            for model in (plain, fast):
                getattr(model.get_submodule(n), proj).weight.add_(delta)
    ref = _eps(plain, inputs)
    torch.testing.assert_close(_eps(fast, inputs), ref, atol=1e-10, rtol=0)
    # one more edit of a single projection, then the same check
    attn = fast.get_submodule(names[0])
    for model in (plain, fast):
        model.get_submodule(names[0]).to_v.weight.mul_(1.5)
    assert attn.to_v.weight.data_ptr() == attn.to_v.weight.data_ptr()
    torch.testing.assert_close(_eps(fast, inputs), _eps(plain, inputs), atol=1e-10, rtol=0)


@torch.no_grad()
@pytest.mark.parametrize("assign", [False, True])
def test_load_state_dict_into_an_optimized_model(inputs, assign):
    """A plain state dict loads (strict) into an optimized model, which then computes the loaded weights' eps."""
    fast = optimize(tiny_st2v_model(0).double())
    _eps(fast, inputs)  # the fused weights of the old weights exist now
    other = tiny_st2v_model(7).double()
    result = fast.load_state_dict(other.state_dict(), strict=True, assign=assign)
    assert not result.missing_keys and not result.unexpected_keys
    torch.testing.assert_close(_eps(fast, inputs), _eps(other, inputs), atol=1e-10, rtol=0)
    # and back: the optimized model's own state dict loads into a plain model
    fresh = tiny_st2v_model(3).double()
    fresh.load_state_dict(fast.state_dict(), strict=True)
    torch.testing.assert_close(_eps(fresh, inputs), _eps(other, inputs), atol=1e-10, rtol=0)


@torch.no_grad()
def test_dtype_move_after_optimize(inputs):
    ref = _eps(tiny_st2v_model(0).double(), inputs)
    fast = optimize(tiny_st2v_model(0))
    _eps(fast, inputs)  # float32 fused weights
    fast.double()
    torch.testing.assert_close(_eps(fast, inputs), ref, atol=1e-10, rtol=0)


def test_acceleration_values():
    assert ACCELERATIONS == ("none", "fused", "compile")
    plain = tiny_st2v_model(0)
    assert optimize(plain, "none") is plain and not _fused_processors(plain)
    with pytest.raises(ValueError, match="acceleration 'speed' is not available; pick one of none, fused, compile"):
        optimize(plain, "speed")
    assert all(isinstance(p, FusedSelfAttnProcessor) for p in _fused_processors(optimize(plain, "fused")))


def test_inference_mode_weights_edited_in_place(inputs):
    """ComfyUI loads under torch.inference_mode: those tensors have no version counter, so an in-place edit of the
    same storage is announced with mark_weights_changed (a replaced tensor is found without it)."""
    with torch.inference_mode():
        plain = tiny_st2v_model(0).double()
        fast = optimize(copy.deepcopy(plain))
        _eps(fast, inputs)
        attn = _fused_attentions(fast)[0]
        name = next(n for n, m in fast.named_modules() if m is attn)
        for model in (plain, fast):
            model.get_submodule(name).to_q.weight.mul_(-2.0)
        mark_weights_changed(fast)
        torch.testing.assert_close(_eps(fast, inputs), _eps(plain, inputs), atol=1e-10, rtol=0)
        for model in (plain, fast):  # a new tensor (what ComfyUI's weight patches and offloading do)
            proj = model.get_submodule(name).to_k
            proj.weight = torch.nn.Parameter(proj.weight * 0.5, requires_grad=False)
        torch.testing.assert_close(_eps(fast, inputs), _eps(plain, inputs), atol=1e-10, rtol=0)
