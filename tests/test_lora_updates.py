"""LoRAs as weight updates (``live2diff_core.lora.lora_updates``): the one implementation ``merge_lora`` adds into
the weights and the ComfyUI node applies as ``ModelPatcher`` patches (``nodes/live2diff_nodes.py``, ``_LoraPatch``).

ComfyUI patches a weight as ``(weight.float() + delta).to(weight.dtype)`` (``patch_weight_to_device``: a float32
copy, the patch added, one rounding): :func:`patched` below does exactly that, and must equal ``merge_lora`` bit for
bit. The real ``ModelPatcher`` path runs in tests/integration/test_lora_patches.py."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from live2diff_core.lora import LoraUpdate, load_lora_file, lora_updates, merge_lora, weights_changed
from test_lora import (CONV1, OUT, PROJ_IN, Q, TE_FC1, TE_Q, TIME, base_clip, base_unet, kohya,  # noqa: F401
                       make_pair, unet, weight)


def patched(model_sd: dict[str, torch.Tensor], updates: list[LoraUpdate], strength: float) -> dict:
    """What ComfyUI's ``patch_weight_to_device`` makes of ``updates`` at ``strength`` on a ``{target.module.weight:
    tensor}`` state dict: float32 copy, every patch of the key added in order (the node's ``_LoraPatch``), rounded
    once into the weight's dtype."""
    out = {}
    for u in updates:
        w = out.get(u.param, model_sd[u.param])
        temp = w.to(torch.float32, copy=True)
        delta = u.delta(strength, temp.device)
        target = temp if delta.shape == temp.shape else temp[:, : delta.shape[1]]
        target += delta
        out[u.param] = temp.to(w.dtype)
    return out


def container_sd(unet: nn.Module, text: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """The state dict of the node's ModelContainer (parts under ``unet.`` / ``text_encoder.``)."""
    sd = {f"unet.{k}": v for k, v in unet.state_dict().items()}
    if text is not None:
        sd.update({f"text_encoder.{k}": v for k, v in text.state_dict().items()})
    return sd


def style_lora(unet: nn.Module, text: nn.Module | None, alpha: float = 2.0, seed: int = 0) -> dict:
    lora = {}
    for i, n in enumerate([Q, OUT, PROJ_IN, CONV1, TIME]):
        lora.update(kohya("lora_unet", n, *make_pair(weight(unet, n), 4, seed=seed + i), alpha))
    if text is not None:
        for i, n in enumerate([TE_Q, TE_FC1]):
            lora.update(kohya("lora_te", n, *make_pair(weight(text, n), 2, seed=seed + 10 + i), alpha))
    return lora


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", ["standard", "official"])
@pytest.mark.parametrize("strength", [1.0, 0.35, -1.5])
def test_patched_equals_merged_bit_for_bit(base_unet, base_clip, dtype, mode, strength):
    unet, text = copy.deepcopy(base_unet).to(dtype), copy.deepcopy(base_clip).to(dtype)
    lora = style_lora(base_unet, base_clip)
    sd = container_sd(unet, text)
    before = {k: v.clone() for k, v in sd.items()}
    updates, report = lora_updates(unet, text, lora, mode=mode, source="LoRA style.safetensors")
    assert all(torch.equal(before[k], v) for k, v in container_sd(unet, text).items())  # nothing touched
    assert {u.param for u in updates} <= set(sd)  # the container's own names
    assert report.merged == {"unet": 5, "text_encoder": 2}
    out = patched(sd, updates, strength)

    merged = merge_lora(unet, text, lora, strength, mode=mode)
    assert merged.merged == report.merged and merged.strength == strength
    after = container_sd(unet, text)
    assert set(out) == {k for k in after if not torch.equal(after[k], before[k])}
    for key, w in out.items():
        assert torch.equal(after[key], w), key


def test_updates_do_not_depend_on_strength_and_zero_is_no_change(base_unet):
    lora = style_lora(base_unet, None)
    updates, _ = lora_updates(base_unet, None, lora)
    sd = container_sd(base_unet)
    assert all(torch.equal(w, sd[k]) for k, w in patched(sd, updates, 0.0).items())  # strength 0 = the base, exactly
    for u in updates:
        torch.testing.assert_close(u.delta(0.5) * 2, u.delta(1.0), rtol=0, atol=0)
    assert sum(u.nbytes for u in updates) == sum(v.numel() * v.element_size() for k, v in lora.items()
                                                 if not k.endswith(".alpha"))  # low-rank: the file's own tensors


def test_two_loras_patch_in_order_like_two_merges(base_unet):
    """Two LoRAs on the same weights (float32): the patches added in order equal two merges in a row."""
    a, b = style_lora(base_unet, None, seed=0), style_lora(base_unet, None, alpha=4.0, seed=50)
    ua, _ = lora_updates(base_unet, None, a)
    ub, _ = lora_updates(base_unet, None, b, mode="official")
    sd = container_sd(base_unet)
    first = patched(sd, ua, 0.7)
    both = patched({**sd, **first}, ub, -0.4)
    unet = copy.deepcopy(base_unet)
    merge_lora(unet, None, a, 0.7)
    merge_lora(unet, None, b, -0.4, mode="official")
    after = container_sd(unet)
    for key, w in both.items():
        assert torch.equal(after[key], w), key


@pytest.mark.parametrize("mode", ["standard", "official"])
def test_conv_in_slice_update(base_unet, mode):
    g = torch.Generator().manual_seed(5)
    down, up = torch.randn(2, 2, 3, 3, generator=g), torch.randn(8, 2, 1, 1, generator=g)
    lora = kohya("lora_unet", "conv_in", down, up)
    (update,), _ = lora_updates(base_unet, None, lora, mode=mode)
    assert update.param == "unet.conv_in.weight" and update.shape == (8, 2, 3, 3)
    out = patched(container_sd(base_unet), [update], 0.8)
    unet = copy.deepcopy(base_unet)
    merge_lora(unet, None, lora, 0.8, mode=mode)
    assert torch.equal(unet.conv_in.weight, out["unet.conv_in.weight"])


def test_official_ignores_alpha_standard_scales_alpha_over_rank(base_unet):
    rank, alpha = 4, 1.0
    down, up = make_pair(weight(base_unet, Q), rank, seed=3)
    lora = kohya("lora_unet", Q, down, up, alpha)
    (std,), _ = lora_updates(base_unet, None, lora, mode="standard")
    (off,), _ = lora_updates(base_unet, None, lora, mode="official")
    assert (std.ratio, off.ratio) == (alpha / rank, 1.0)
    product = (up.flatten(1) @ down.flatten(1)).reshape(weight(base_unet, Q).shape)
    assert torch.equal(off.delta(0.6), product * 0.6)
    assert torch.equal(std.delta(0.6), product * (0.6 * alpha / rank))
    (no_alpha,), _ = lora_updates(base_unet, None, kohya("lora_unet", Q, down, up), mode="standard")
    assert no_alpha.ratio == 1.0  # no alpha = rank


@pytest.mark.parametrize("bad", ["up", "alpha"])
def test_nan_in_a_lora_file_fails_naming_the_file(tmp_path, base_unet, bad):
    from safetensors.torch import save_file

    down, up = make_pair(weight(base_unet, Q), 4, seed=1)
    lora = kohya("lora_unet", Q, down, up, 4.0)
    stem = f"lora_unet_{Q.replace('.', '_')}"
    key = f"{stem}.lora_up.weight" if bad == "up" else f"{stem}.alpha"
    lora[key] = lora[key].clone()
    lora[key].view(-1)[0] = float("nan") if bad == "up" else float("inf")
    path = tmp_path / "broken-style.safetensors"
    save_file(lora, str(path))
    with pytest.raises(ValueError, match=rf"^LoRA broken-style\.safetensors: NaN/Inf values in 1 tensor\(s\) "
                                         rf"\(e\.g\. {key.replace('.', chr(92) + '.')}\)"):
        lora_updates(base_unet, None, load_lora_file(path), source=f"LoRA {path.name}")
    unet = copy.deepcopy(base_unet)
    with pytest.raises(ValueError, match="broken-style.safetensors"):  # the merge runs the same check
        merge_lora(unet, None, load_lora_file(path), 1.0, source=f"LoRA {path.name}")
    assert torch.equal(unet.get_submodule(Q).weight, base_unet.get_submodule(Q).weight)


def test_non_finite_strength_is_refused(unet):
    lora = kohya("lora_unet", Q, *make_pair(weight(unet, Q), 2, seed=4))
    with pytest.raises(ValueError, match="finite"):
        merge_lora(unet, None, lora, float("nan"))


def test_weights_changed_rebuilds_fused_weights_and_bumps_the_epoch():
    """A weight edited where the fused q/k/v cache cannot see it (an inference tensor, edited in place: same
    storage, version 0; or a patched weight landing at a freed one's address): ``weights_changed`` makes the next
    call rebuild it, and bumps the counter captured calls compare."""
    from diffusers.models.attention_processor import Attention

    from live2diff_core.fused_attention import fused_weight

    with torch.inference_mode():
        attn = Attention(query_dim=8, heads=2, dim_head=4)
        model = nn.Sequential(attn)
        stale_before = fused_weight(attn)[0].clone()
        attn.to_q.weight.add_(1.0)  # in place, inference tensor: pointer and version unchanged
        assert torch.equal(fused_weight(attn)[0], stale_before)  # the cache cannot tell
        epoch = getattr(model, "weights_epoch", 0)
        weights_changed(model)
        assert model.weights_epoch == epoch + 1
        fresh = fused_weight(attn)[0]
    assert torch.equal(fresh[:8], attn.to_q.weight) and not torch.equal(fresh, stale_before)


@torch.no_grad()
def test_patched_and_unpatched_weights_are_captured_again():
    """What the node does on a strength change: ComfyUI swaps patched weights in (new tensors, the originals kept
    aside) and out again, then the node calls ``weights_changed``: the captured streaming call (emulated CUDA graph,
    which refuses a replay over moved weights) is captured again each time and equals eager, fused q/k/v included.
    On a GPU the same runs with real graphs (not run here: no GPU in this suite)."""
    from test_acceleration import EmulatedGraphs, _stream, _twin_engines
    from tiny import tiny_video_unet

    unet = tiny_video_unet(seed=3, dtype=torch.float64)
    eager, fast, z = _twin_engines(unet, 16, "cuda_graph", capture=EmulatedGraphs([unet]))
    assert torch.allclose(_stream(fast, z, 8, 10), _stream(eager, z, 8, 10), atol=1e-12, rtol=0)
    names = ["down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_v",  # fused q/k/v, not in the watched sample
             "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k",
             "down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.to_v"]
    lora = {}
    for i, n in enumerate(names):
        down, up = make_pair(unet.get_submodule(n).weight, 4, seed=40 + i, dtype=torch.float64)
        lora.update(kohya("lora_unet", n, down, up, 2.0))
    updates, report = lora_updates(unet, None, lora)
    assert report.merged["unet"] == 3
    originals = {u.module: unet.get_submodule(u.module).weight for u in updates}

    def swap(strength: float | None) -> None:  # ComfyUI's set_attr_param: patched copies in, or the originals back
        for u in updates:
            w = originals[u.module]
            new = w if strength is None else u.add_to_(w.detach().clone(), strength)
            unet.get_submodule(u.module).weight = nn.Parameter(new, requires_grad=False)
        weights_changed(unet)

    captures = fast.runner.captures
    for start, strength in zip((10, 12, 14), (1.0, None, -0.5)):
        swap(strength)
        assert torch.allclose(_stream(fast, z, start, start + 2), _stream(eager, z, start, start + 2), atol=1e-12,
                              rtol=0), strength
        assert fast.runner.captures == captures + 1
        captures += 1
