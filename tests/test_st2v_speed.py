"""StreamingT2V speed options: fused self-attention projections and torch.compile give the same eps."""
from __future__ import annotations

import torch
from diffusers.models.attention_processor import FusedAttnProcessor2_0
from st2v_tiny import tiny_inputs, tiny_st2v_model

from streaming_t2v_core.apm import APMAttnProcessor
from streaming_t2v_core.speed import optimize


@torch.no_grad()
def test_fused_and_compiled_model_equal_the_plain_one():
    lat, text, image, frames = tiny_inputs(2, seed=4)
    plain = tiny_st2v_model(0).double()
    ref = plain(lat.double(), 501, text.double(), image.double(), frames.double())
    fast = optimize(tiny_st2v_model(0).double())
    processors = [m.processor for m in fast.modules() if hasattr(m, "processor")]
    assert sum(isinstance(p, FusedAttnProcessor2_0) for p in processors) > 0
    assert sum(isinstance(p, APMAttnProcessor) for p in processors) > 0  # the APM cross-attentions are kept
    got = fast(lat.double(), 501, text.double(), image.double(), frames.double())
    assert torch.allclose(got, ref, atol=1e-10, rtol=0)
    compiled = optimize(tiny_st2v_model(0).double(), compile=True, compile_options={"backend": "eager"})
    assert torch.allclose(compiled(lat.double(), 501, text.double(), image.double(), frames.double()), ref,
                          atol=1e-10, rtol=0)
    assert not [k for k in compiled.state_dict() if "_orig_mod" in k]
