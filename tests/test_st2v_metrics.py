"""StreamingT2V metrics: MAWE (official formula and forward-splat warp), SCuts, CLIP score."""
from __future__ import annotations

import math

import pytest
import torch
from st2v_tiny import clip_tokenizer, tiny_clip_model

from streaming_t2v_core import metrics as M


def texture(h: int, w: int, seed: int = 0, cell: int = 16) -> torch.Tensor:
    """Smooth random colour texture [h, w, 3] in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, max(h // cell, 2), max(w // cell, 2), generator=g)
    up = torch.nn.functional.interpolate(base, size=(h, w), mode="bicubic", align_corners=False)
    return up.clamp(0, 1)[0].permute(1, 2, 0).contiguous()


def panning_clip(n: int, h: int = 64, w: int = 64, step: int = 1, seed: int = 0, cell: int = 16) -> torch.Tensor:
    big = texture(h, w + step * n, seed, cell)
    return torch.stack([big[:, step * i:step * i + w] for i in range(n)])


# --------------------------------------------------------------------------------------------------------
# warp_with_flow
# --------------------------------------------------------------------------------------------------------


def test_warp_integer_flow_reproduces_shifted_frame():
    g = torch.Generator().manual_seed(0)
    frame = torch.rand(6, 7, 3, generator=g) * 255
    flow = torch.zeros(6, 7, 2)
    flow[..., 0] = 2  # dx
    flow[..., 1] = -1  # dy
    warped, occ = M.warp_with_flow(frame, flow)
    expected = torch.zeros_like(frame)
    expected[0:5, 2:7] = frame[1:6, 0:5]  # target (y-1, x+2) <- source (y, x)
    expected_occ = torch.ones(6, 7)
    expected_occ[0:5, 2:7] = 0
    assert torch.equal(warped, expected)
    assert torch.equal(occ, expected_occ)
    # masked border: the columns/rows nothing lands on
    assert occ[:, :2].eq(1).all() and occ[5].eq(1).all()


def test_warp_rounding_collisions_last_write_wins():
    frame = torch.arange(1 * 4 * 1, dtype=torch.float32).view(1, 4, 1) + 10  # values 10..13
    flow = torch.zeros(1, 4, 2)
    flow[0, 0, 0] = 1.4  # round(0 + 1.4) = 1: collides with source x=1 (flow 0); x=1 comes later -> wins
    flow[0, 2, 0] = -0.6  # round(2 - 0.6) = 1: collides again; x=2 is the last source hitting 1
    flow[0, 3, 0] = 0.5  # round(3.5) = 4 (half to even) -> out of frame, dropped
    warped, occ = M.warp_with_flow(frame, flow)
    assert warped[0, :, 0].tolist() == [0.0, 12.0, 0.0, 0.0]
    assert occ[0].tolist() == [1.0, 0.0, 1.0, 1.0]


def test_warp_shift_1p4_px_masks_column_0():
    # the spec's verification: a 1.4-px shift is a 1-px shift and column 0 is masked
    frame = texture(8, 8) * 255
    flow = torch.zeros(8, 8, 2)
    flow[..., 0] = 1.4
    warped, occ = M.warp_with_flow(frame, flow)
    assert torch.equal(warped[:, 1:], frame[:, :-1])
    assert occ[:, 0].eq(1).all() and occ[:, 1:].eq(0).all()


# --------------------------------------------------------------------------------------------------------
# MAWE
# --------------------------------------------------------------------------------------------------------


def test_mawe_matches_hand_formula_with_known_flow():
    """Constant integer flow backend: W_t and motion_t by hand, MAWE = mean_t W_t / (9.5 motion_t)."""
    clip = panning_clip(4, 16, 16, step=1)

    def flow_fn(left, right):
        f = torch.zeros(left.shape[0], left.shape[1], 2)
        f[..., 0] = -1.0  # content moves left by one pixel per frame
        return f

    res = M.mawe(clip, flow=flow_fn, resize=None)
    x = (clip * 255).round()
    ratios = []
    for t in range(3):
        known = torch.ones(16, 16, 3)
        known[:, 15] = 0
        warped = torch.zeros(16, 16, 3)
        warped[:, :15] = x[t, :, 1:]
        w = float((((x[t + 1] - warped) * known) ** 2).sum() / known.sum())
        ratios.append(w / (9.5 * 1.0))
    assert res.motions == pytest.approx([1.0, 1.0, 1.0])
    assert res.value == pytest.approx(sum(ratios) / 3, rel=1e-5, abs=1e-9)
    assert res.flow_backend == "flow_fn" and res.static_pairs == 0 and res.size == (16, 16)


def test_mawe_nearly_static_noise_is_very_large_and_moving_is_small():
    moving = panning_clip(6, 64, 64, step=2, cell=8)  # 8-px features: enough texture for Farneback
    still = torch.stack([texture(64, 64, cell=8)] * 6)
    g = torch.Generator().manual_seed(1)
    noisy = (still + 0.03 * torch.randn(still.shape, generator=g)).clamp(0, 1)
    r_move = M.mawe(moving, resize=None)
    r_noise = M.mawe(noisy, resize=None)
    assert r_move.flow_backend == r_noise.flow_backend == "opencv-farneback"
    assert math.isfinite(r_move.value) and math.isfinite(r_noise.value)
    assert min(r_move.motions) > 1.5  # ~2 px per frame
    assert r_move.value < 1.0
    assert r_noise.value > 30.0
    assert r_noise.value > 100 * r_move.value


def test_mawe_exactly_static_is_inf_not_nan():
    clip = torch.stack([texture(32, 32)] * 4)
    for backend in ("opencv", "dis"):
        res = M.mawe(clip, flow=backend, resize=None)
        assert res.value == math.inf and not math.isnan(res.value)
        assert res.static_pairs == 3 and res.motions == [0.0, 0.0, 0.0] and res.warp_errors == [0.0] * 3


def test_mawe_resize_to_720_and_backends():
    clip = panning_clip(3, 48, 64, step=1)
    res = M.mawe(clip, flow="dis")  # official: bilinear (no antialias) to 720x720
    assert res.size == (720, 720) and res.flow_backend == "opencv-dis"
    assert len(res.warp_errors) == len(res.motions) == len(res.ratios) == 2
    assert float(res) == res.value and math.isfinite(res.value)
    with pytest.raises(ValueError):
        M.mawe(clip[:1])
    with pytest.raises(ValueError):
        M.get_flow_backend("nope")


def test_raft_backend_absent_or_named():
    if M.raft_available():
        pytest.skip("torchvision present: RAFT weights may not be downloadable here")
    with pytest.raises(ImportError, match="torchvision"):
        M.get_flow_backend("raft")
    assert M.get_flow_backend("auto").name == "opencv-farneback"


# --------------------------------------------------------------------------------------------------------
# Scene cuts
# --------------------------------------------------------------------------------------------------------


def test_scene_cuts_finds_hard_cut_and_none_in_smooth_clip():
    pytest.importorskip("scenedetect")
    smooth = panning_clip(40, 96, 96, step=1, seed=0)
    other = panning_clip(20, 96, 96, step=1, seed=5)
    cut = torch.cat([smooth[:20], other])
    assert M.scene_cuts(smooth) == []
    assert M.scene_cuts(cut) == [20]


# --------------------------------------------------------------------------------------------------------
# CLIP score
# --------------------------------------------------------------------------------------------------------


def test_clip_score_tiny_model_deterministic(tmp_path):
    tok = clip_tokenizer()
    model = tiny_clip_model()
    frames = panning_clip(5, 40, 48, step=2)
    s1 = M.clip_score(frames, "a cat running", model, tok, batch_size=2)
    s2 = M.clip_score(frames, "a cat running", model, tok)
    assert math.isfinite(s1) and -100.0 <= s1 <= 100.0
    assert s1 == pytest.approx(s2, abs=1e-4)  # deterministic, batch-size independent

    # hand reference: mean of 100 * cosine with the model's own projections
    from streaming_t2v_core.metrics import _clip_pixels, _features

    ids = tok(["a cat running"], padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        t = _features(model.get_text_features(input_ids=ids.input_ids, attention_mask=ids.attention_mask))
        i = _features(model.get_image_features(pixel_values=_clip_pixels(frames, 32)))
    ref = float((100 * torch.nn.functional.cosine_similarity(i, t.expand_as(i), dim=-1)).mean())
    assert s1 == pytest.approx(ref, abs=1e-4)
    assert M.clip_score(frames, "a dog", model, tok) != pytest.approx(s1, abs=1e-6)
