"""LoRA merging (``live2diff_core.lora``): key formats, scaling modes, name resolution, errors, file loading."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from live2diff_core.lora import LoraMergeReport, load_lora_file, merge_lora

# SD1.5 topology (4 blocks, 2 layers per block, attention in the first three down / last three up blocks) at toy width.
UNET_CONFIG = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    block_out_channels=(8, 16, 16, 16),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    layers_per_block=2,
    cross_attention_dim=16,
    attention_head_dim=2,
    norm_num_groups=4,
)
# Modules the LCM-LoRA trains (diffusers examples/consistency_distillation, LoRA target modules).
LCM_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1",
               "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj")

Q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
OUT = "up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_out.0"
PROJ_IN = "down_blocks.1.attentions.0.proj_in"  # 1x1 Conv2d in SD1.5 (use_linear_projection=False)
CONV1 = "mid_block.resnets.1.conv1"  # 3x3 Conv2d
TIME = "time_embedding.linear_1"
TE_Q = "encoder.layers.0.self_attn.q_proj"
TE_FC1 = "encoder.layers.1.mlp.fc1"


# ---------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def base_unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(**UNET_CONFIG).eval()


@pytest.fixture
def unet(base_unet):
    return copy.deepcopy(base_unet)


@pytest.fixture(scope="module")
def base_clip():
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(1)
    cfg = CLIPTextConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=0, eos_token_id=2,
                         pad_token_id=1)
    return CLIPTextModel(cfg).eval()


class TextModelV4(nn.Module):
    """transformers-4 style layout: the CLIP transformer lives under ``text_model.``."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.text_model = inner


@pytest.fixture
def clip(base_clip):
    return copy.deepcopy(base_clip)


def weight(model: nn.Module, name: str) -> torch.Tensor:
    return model.get_submodule(name).weight.detach().clone()


def make_pair(w: torch.Tensor, rank: int, seed: int, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """(down, up) for a weight: Linear [r,in]/[out,r]; conv kxk down [r,in,k,k] and 1x1 up [out,r,1,1]."""
    g = torch.Generator().manual_seed(seed)
    down = torch.randn(rank, *w.shape[1:], generator=g) * 0.1
    up = torch.randn(w.shape[0], rank, *([1] * (w.dim() - 2)), generator=g) * 0.1
    return down.to(dtype), up.to(dtype)


def expected(w: torch.Tensor, down: torch.Tensor, up: torch.Tensor, scale: float) -> torch.Tensor:
    delta = (up.float().flatten(1) @ down.float().flatten(1)).reshape(w.shape)
    return (w.float() + scale * delta).to(w.dtype)


def kohya(prefix: str, path: str, down, up, alpha: float | None = None) -> dict[str, torch.Tensor]:
    stem = f"{prefix}_{path.replace('.', '_')}"
    sd = {f"{stem}.lora_down.weight": down, f"{stem}.lora_up.weight": up}
    if alpha is not None:
        sd[f"{stem}.alpha"] = torch.tensor(alpha)
    return sd


def sd15_ldm_name(name: str) -> str | None:
    """Closed-form SD1.5 diffusers -> LDM module name (the tables of the diffusers<->SD conversion scripts)."""
    prefixes = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
                "time_embedding.linear_2": "time_embed.2", "conv_out": "out.2",
                "mid_block.attentions.0": "middle_block.1"}
    for i in range(4):
        for j in range(2):
            prefixes[f"down_blocks.{i}.resnets.{j}"] = f"input_blocks.{3 * i + j + 1}.0"
            if i < 3:
                prefixes[f"down_blocks.{i}.attentions.{j}"] = f"input_blocks.{3 * i + j + 1}.1"
            prefixes[f"mid_block.resnets.{j}"] = f"middle_block.{2 * j}"
        for j in range(3):
            prefixes[f"up_blocks.{i}.resnets.{j}"] = f"output_blocks.{3 * i + j}.0"
            if i > 0:
                prefixes[f"up_blocks.{i}.attentions.{j}"] = f"output_blocks.{3 * i + j}.1"
        if i < 3:
            prefixes[f"down_blocks.{i}.downsamplers.0.conv"] = f"input_blocks.{3 * (i + 1)}.0.op"
            prefixes[f"up_blocks.{i}.upsamplers.0.conv"] = f"output_blocks.{3 * i + 2}.{1 if i == 0 else 2}.conv"
    resnet = {"conv1": "in_layers.2", "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1",
              "conv_shortcut": "skip_connection"}
    for head in sorted(prefixes, key=len, reverse=True):
        if name == head or name.startswith(head + "."):
            rest = name[len(head) + 1:]
            if ".resnets." in head and rest:
                first, _, tail = rest.partition(".")
                rest = ".".join(x for x in (resnet[first], tail) if x)
            return ".".join(x for x in (prefixes[head], rest) if x)
    return None


def spatial_targets(unet: nn.Module) -> list[str]:
    return [n for n, m in unet.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


# ---------------------------------------------------------------------------------------------------- kohya
def test_kohya_diffusers_names_alpha_over_rank(unet):
    names, rank, alpha, strength = [Q, OUT, PROJ_IN, CONV1, TIME], 4, 2.0, 0.7
    before = {n: weight(unet, n) for n in names}
    lora, pairs = {}, {}
    for i, n in enumerate(names):
        down, up = make_pair(before[n], rank, seed=i)
        if n == PROJ_IN:  # SD1.5 files store 1x1-conv LoRAs as 4-D
            assert down.dim() == 4 and up.dim() == 4
        pairs[n] = (down, up)
        lora.update(kohya("lora_unet", n, down, up, alpha))
    report = merge_lora(unet, None, lora, strength)
    assert isinstance(report, LoraMergeReport)
    assert report.merged == {"unet": 5, "text_encoder": 0} and report.unresolved == [] and report.skipped == []
    assert report.formats == ["kohya"] and report.mode == "standard"
    for n in names:
        torch.testing.assert_close(weight(unet, n), expected(before[n], *pairs[n], strength * alpha / rank),
                                   rtol=0, atol=1e-6)


def test_official_mode_ignores_alpha(base_unet):
    rank, alpha, strength = 4, 1.0, 0.6
    names = [Q, PROJ_IN, CONV1]
    lora, pairs = {}, {}
    for i, n in enumerate(names):
        pairs[n] = make_pair(weight(base_unet, n), rank, seed=10 + i)
        lora.update(kohya("lora_unet", n, *pairs[n], alpha))
    std, off = copy.deepcopy(base_unet), copy.deepcopy(base_unet)
    merge_lora(std, None, lora, strength)
    report = merge_lora(off, None, lora, strength, mode="official")
    assert report.mode == "official" and report.merged["unet"] == 3
    for n in names:
        w0 = weight(base_unet, n)
        torch.testing.assert_close(weight(off, n), expected(w0, *pairs[n], strength), rtol=0, atol=1e-6)
        # official = standard * rank / alpha on the update
        torch.testing.assert_close(weight(off, n) - w0, (weight(std, n) - w0) * (rank / alpha), rtol=1e-4, atol=1e-6)


def test_missing_alpha_means_rank(base_unet):
    down, up = make_pair(weight(base_unet, Q), 4, seed=3)
    a, b = copy.deepcopy(base_unet), copy.deepcopy(base_unet)
    merge_lora(a, None, kohya("lora_unet", Q, down, up), 1.0)
    merge_lora(b, None, kohya("lora_unet", Q, down, up, alpha=4.0), 1.0)
    assert torch.equal(weight(a, Q), weight(b, Q))
    torch.testing.assert_close(weight(a, Q), expected(weight(base_unet, Q), down, up, 1.0), rtol=0, atol=1e-6)


def test_kohya_ldm_names_match_diffusers_names(base_unet):
    """Every spatial Linear/Conv of an SD1.5-topology UNet: LDM-named kohya keys land on the same modules."""
    names = [n for n in spatial_targets(base_unet) if sd15_ldm_name(n) is not None]
    assert len(names) > 200
    diff_lora, ldm_lora = {}, {}
    for i, n in enumerate(names):
        down, up = make_pair(weight(base_unet, n), 2, seed=100 + i)
        diff_lora.update(kohya("lora_unet", n, down, up, 1.0))
        ldm_lora.update(kohya("lora_unet", sd15_ldm_name(n), down, up, 1.0))
    a, b = copy.deepcopy(base_unet), copy.deepcopy(base_unet)
    ra = merge_lora(a, None, diff_lora, 0.9)
    rb = merge_lora(b, None, ldm_lora, 0.9)
    assert ra.merged["unet"] == rb.merged["unet"] == len(names)
    assert rb.unresolved == [] and "kohya-ldm" in rb.formats
    assert sorted(ra.merged_modules["unet"]) == sorted(rb.merged_modules["unet"]) == sorted(names)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_ldm_upsampler_without_attention(unet):
    # SD1.5 output_blocks.2 is [ResBlock, Upsample]: its conv is output_blocks.2.1.conv (no attention in up_blocks.0)
    name = "up_blocks.0.upsamplers.0.conv"
    w0 = weight(unet, name)
    down, up = make_pair(w0, 2, seed=7)
    report = merge_lora(unet, None, kohya("lora_unet", "output_blocks.2.1.conv", down, up), 1.0)
    assert report.merged_modules["unet"] == [name]
    torch.testing.assert_close(weight(unet, name), expected(w0, down, up, 1.0), rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------------- LCM-LoRA
def lcm_style_lora(unet: nn.Module, rank: int = 4, alpha: float = 0.5) -> dict[str, torch.Tensor]:
    """The layout of ``latent-consistency/lcm-lora-sdv1-5`` ``pytorch_lora_weights.safetensors``: kohya keys with
    diffusers module names (``lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight``, ``.lora_up.weight``,
    ``.alpha``), fp16 tensors, UNet only, alpha != rank (alpha/rank = 1/8 here)."""
    lora = {}
    for i, (n, m) in enumerate(unet.named_modules()):
        if isinstance(m, (nn.Linear, nn.Conv2d)) and any(n.endswith("." + t) for t in LCM_TARGETS):
            down, up = make_pair(m.weight.detach(), rank, seed=1000 + i, dtype=torch.float16)
            lora.update(kohya("lora_unet", n, down, up))
            lora[f"lora_unet_{n.replace('.', '_')}.alpha"] = torch.tensor(alpha, dtype=torch.float16)
    return lora


def test_lcm_lora_format_all_targets(base_unet):
    lora = lcm_style_lora(base_unet)
    n_modules = len(lora) // 3
    assert "lora_unet_down_blocks_0_attentions_0_proj_in.alpha" in lora
    unet = copy.deepcopy(base_unet)
    report = merge_lora(unet, None, lora, 1.0)
    assert report.merged == {"unet": n_modules, "text_encoder": 0} and report.unresolved == []
    for n in (Q, OUT, PROJ_IN, CONV1, "down_blocks.2.downsamplers.0.conv", "up_blocks.2.upsamplers.0.conv"):
        stem = f"lora_unet_{n.replace('.', '_')}"
        down, up = lora[f"{stem}.lora_down.weight"], lora[f"{stem}.lora_up.weight"]
        torch.testing.assert_close(weight(unet, n), expected(weight(base_unet, n), down, up, 0.5 / 4),
                                   rtol=0, atol=1e-6)


def test_lcm_lora_matches_diffusers_peft_fuse(base_unet):
    """Oracle: diffusers ``load_lora_into_unet`` + ``fuse_lora(lora_scale=1.0)`` (the official LCM-LoRA path)."""
    pytest.importorskip("peft")
    from diffusers import StableDiffusionPipeline

    lora = lcm_style_lora(base_unet)
    ours = copy.deepcopy(base_unet)
    merge_lora(ours, None, dict(lora), 1.0)
    ref = copy.deepcopy(base_unet)
    state, alphas = StableDiffusionPipeline.lora_state_dict(dict(lora), unet_config=ref.config)
    StableDiffusionPipeline.load_lora_into_unet(state, alphas, ref, adapter_name="lcm")
    ref.fuse_lora(lora_scale=1.0)
    ref.unload_lora()
    a, b = ours.state_dict(), ref.state_dict()
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)


# ---------------------------------------------------------------------------------------------------- diffusers / PEFT
def test_peft_lora_a_b_with_and_without_alpha(unet, clip):
    w_q, w_out, w_te = weight(unet, Q), weight(unet, OUT), weight(clip, TE_Q)
    dq, uq = make_pair(w_q, 4, seed=20)
    do, uo = make_pair(w_out, 4, seed=21)
    dt, ut = make_pair(w_te, 2, seed=22)
    lora = {
        f"unet.{Q}.lora_A.weight": dq, f"unet.{Q}.lora_B.weight": uq, f"unet.{Q}.alpha": torch.tensor(8.0),
        f"unet.{OUT}.lora_A.default.weight": do, f"unet.{OUT}.lora_B.default.weight": uo,
        f"text_encoder.text_model.{TE_Q}.lora_A.weight": dt, f"text_encoder.text_model.{TE_Q}.lora_B.weight": ut,
    }
    report = merge_lora(unet, clip, lora, 0.5)
    assert report.merged == {"unet": 2, "text_encoder": 1} and report.unresolved == [] and "peft" in report.formats
    torch.testing.assert_close(weight(unet, Q), expected(w_q, dq, uq, 0.5 * 8 / 4), rtol=0, atol=1e-6)
    torch.testing.assert_close(weight(unet, OUT), expected(w_out, do, uo, 0.5), rtol=0, atol=1e-6)
    torch.testing.assert_close(weight(clip, TE_Q), expected(w_te, dt, ut, 0.5), rtol=0, atol=1e-6)


def test_peft_format_matches_diffusers_load_lora_adapter(base_unet):
    pytest.importorskip("peft")
    names = [Q, OUT, PROJ_IN, CONV1]
    lora = {}
    for i, n in enumerate(names):
        down, up = make_pair(weight(base_unet, n), 4, seed=30 + i)
        lora[f"unet.{n}.lora_A.weight"], lora[f"unet.{n}.lora_B.weight"] = down, up
    ours, ref = copy.deepcopy(base_unet), copy.deepcopy(base_unet)
    merge_lora(ours, None, dict(lora), 0.8)
    ref.load_lora_adapter(dict(lora), prefix="unet", adapter_name="x")
    ref.fuse_lora(lora_scale=0.8)
    ref.unload_lora()
    for n in names:
        torch.testing.assert_close(weight(ours, n), weight(ref, n), rtol=0, atol=1e-6)


def test_diffusers_lora_down_up_and_attn_processor_names(unet, clip):
    w_p, w_q, w_o = weight(unet, PROJ_IN), weight(unet, Q), weight(unet, OUT)
    w_tk, w_fc = weight(clip, "encoder.layers.0.self_attn.k_proj"), weight(clip, TE_FC1)
    dp, up_ = make_pair(w_p, 2, seed=40)
    dq, uq = make_pair(w_q, 2, seed=41)
    do, uo = make_pair(w_o, 2, seed=42)
    dk, uk = make_pair(w_tk, 2, seed=43)
    df, uf = make_pair(w_fc, 2, seed=44)
    attn1 = Q.rsplit(".", 1)[0]
    attn2 = OUT.rsplit(".", 2)[0]
    lora = {
        f"unet.{PROJ_IN}.lora.down.weight": dp, f"unet.{PROJ_IN}.lora.up.weight": up_,
        f"unet.{PROJ_IN}.alpha": torch.tensor(1.0),
        f"{attn1}.processor.to_q_lora.down.weight": dq, f"{attn1}.processor.to_q_lora.up.weight": uq,  # no prefix
        f"unet.{attn2}.processor.to_out_lora.down.weight": do, f"unet.{attn2}.processor.to_out_lora.up.weight": uo,
        "text_encoder.text_model.encoder.layers.0.self_attn.to_k_lora.down.weight": dk,
        "text_encoder.text_model.encoder.layers.0.self_attn.to_k_lora.up.weight": uk,
        f"text_encoder.text_model.{TE_FC1}.lora_linear_layer.down.weight": df,
        f"text_encoder.text_model.{TE_FC1}.lora_linear_layer.up.weight": uf,
    }
    report = merge_lora(unet, clip, lora, 1.0)
    assert report.merged == {"unet": 3, "text_encoder": 2} and report.unresolved == []
    torch.testing.assert_close(weight(unet, PROJ_IN), expected(w_p, dp, up_, 0.5), rtol=0, atol=1e-6)
    torch.testing.assert_close(weight(unet, Q), expected(w_q, dq, uq, 1.0), rtol=0, atol=1e-6)
    torch.testing.assert_close(weight(unet, OUT), expected(w_o, do, uo, 1.0), rtol=0, atol=1e-6)
    torch.testing.assert_close(weight(clip, "encoder.layers.0.self_attn.k_proj"), expected(w_tk, dk, uk, 1.0),
                               rtol=0, atol=1e-6)
    torch.testing.assert_close(weight(clip, TE_FC1), expected(w_fc, df, uf, 1.0), rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------------- text encoder
@pytest.mark.parametrize("layout", ["transformers5", "transformers4"])
@pytest.mark.parametrize("keys", ["kohya", "peft_text_model", "peft_flat"])
def test_text_encoder_layouts(base_clip, layout, keys):
    clip = copy.deepcopy(base_clip)
    model = clip if layout == "transformers5" else TextModelV4(clip)
    prefix = "" if layout == "transformers5" else "text_model."
    w_q, w_fc = weight(model, prefix + TE_Q), weight(model, prefix + TE_FC1)
    dq, uq = make_pair(w_q, 2, seed=50)
    df, uf = make_pair(w_fc, 2, seed=51)
    lora = {}
    for path, d, u in ((TE_Q, dq, uq), (TE_FC1, df, uf)):
        if keys == "kohya":
            lora.update(kohya("lora_te", "text_model." + path, d, u, alpha=1.0))
        else:
            p = ("text_model." if keys == "peft_text_model" else "") + path
            lora.update({f"text_encoder.{p}.lora_A.weight": d, f"text_encoder.{p}.lora_B.weight": u,
                         f"text_encoder.{p}.alpha": torch.tensor(1.0)})
    report = merge_lora(None, model, lora, 1.0)
    assert report.merged == {"unet": 0, "text_encoder": 2} and report.unresolved == []
    torch.testing.assert_close(weight(model, prefix + TE_Q), expected(w_q, dq, uq, 0.5), rtol=0, atol=1e-6)
    torch.testing.assert_close(weight(model, prefix + TE_FC1), expected(w_fc, df, uf, 0.5), rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", ["standard", "official"])
def test_text_encoder_keys_skipped_without_text_encoder(unet, base_clip, mode):
    down, up = make_pair(weight(unet, Q), 2, seed=60)
    dt, ut = make_pair(weight(base_clip, TE_Q), 2, seed=61)
    lora = {**kohya("lora_unet", Q, down, up, 1.0), **kohya("lora_te", "text_model." + TE_Q, dt, ut, 1.0)}
    report = merge_lora(unet, None, lora, 1.0, mode=mode)
    assert report.merged == {"unet": 1, "text_encoder": 0}
    assert report.unresolved == []
    assert sorted(report.skipped) == sorted(k for k in lora if k.startswith("lora_te_"))


# ----------------------------------------------------------------------------------------------- reporting / errors
def test_unresolved_keys_are_reported(unet):
    w0 = weight(unet, Q)
    down, up = make_pair(w0, 2, seed=70)
    lora = {
        **kohya("lora_unet", Q, down, up, 2.0),
        **kohya("lora_unet", "down_blocks.0.attentions.7.proj_in", down, up, 1.0),  # no such module
        f"lora_unet_{CONV1.replace('.', '_')}.hada_w1_a": torch.zeros(2, 2),  # LoHa: unsupported
        f"lora_unet_{Q.replace('.', '_')}.dora_scale": torch.ones(1, 1),  # DoRA: unsupported
        f"lora_unet_{OUT.replace('.', '_')}.lora_up.weight": torch.zeros(16, 2),  # orphan up
        "some.random.tensor": torch.zeros(1),
    }
    report = merge_lora(unet, None, lora, 1.0)
    assert report.merged["unet"] == 1
    torch.testing.assert_close(weight(unet, Q), expected(w0, down, up, 1.0), rtol=0, atol=1e-6)
    expected_unresolved = {k for k in lora if not k.startswith(f"lora_unet_{Q.replace('.', '_')}.lora_")
                           and k != f"lora_unet_{Q.replace('.', '_')}.alpha"}
    assert set(report.unresolved) == expected_unresolved


def test_unrelated_dict_raises(unet):
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    with pytest.raises(ValueError, match="no LoRA key matched"):
        merge_lora(unet, None, {"model.diffusion_model.foo.weight": torch.zeros(2, 2)}, 1.0)
    sdxl_like = kohya("lora_unet", "input_blocks.7.1.transformer_blocks.5.attn1.to_q",
                      torch.zeros(2, 640), torch.zeros(640, 2), 1.0)
    with pytest.raises(ValueError, match="no LoRA key matched"):
        merge_lora(unet, None, sdxl_like, 1.0)
    with pytest.raises(ValueError, match="empty"):
        merge_lora(unet, None, {}, 1.0)
    with pytest.raises(ValueError, match="mode"):
        merge_lora(unet, None, kohya("lora_unet", Q, *make_pair(weight(unet, Q), 2, seed=1)), 1.0, mode="kohya")
    assert all(torch.equal(before[k], v) for k, v in unet.state_dict().items())


def test_shape_mismatch_raises_before_modifying(unet):
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    good = kohya("lora_unet", Q, *make_pair(weight(unet, Q), 2, seed=80), 1.0)
    bad = kohya("lora_unet", PROJ_IN, torch.zeros(2, 320, 1, 1), torch.zeros(640, 2, 1, 1), 1.0)  # SDXL-sized
    with pytest.raises(ValueError, match="does not fit"):
        merge_lora(unet, None, {**good, **bad}, 1.0)
    assert all(torch.equal(before[k], v) for k, v in unet.state_dict().items())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dtype_and_device_preserved(base_unet, dtype):
    unet = copy.deepcopy(base_unet).to(dtype)
    names = [Q, PROJ_IN, CONV1]
    lora, pairs = {}, {}
    for i, n in enumerate(names):
        pairs[n] = make_pair(weight(base_unet, n), 4, seed=90 + i, dtype=torch.float16)
        lora.update(kohya("lora_unet", n, *pairs[n], 2.0))
    w0 = {n: weight(unet, n) for n in names}
    merge_lora(unet, None, lora, 1.0)
    assert {p.dtype for p in unet.parameters()} == {dtype}
    assert {p.device for p in unet.parameters()} == {torch.device("cpu")}
    for n in names:  # float32 update, one rounding into the weight's dtype
        assert torch.equal(weight(unet, n), expected(w0[n], *pairs[n], 0.5))


@pytest.mark.parametrize("mode", ["standard", "official"])
def test_conv_in_lora_with_fewer_input_channels(unet, mode):
    w0 = weight(unet, "conv_in")  # [8, 4, 3, 3]
    g = torch.Generator().manual_seed(5)
    down, up = torch.randn(2, 2, 3, 3, generator=g), torch.randn(8, 2, 1, 1, generator=g)
    merge_lora(unet, None, kohya("lora_unet", "conv_in", down, up), 1.0, mode=mode)
    w1 = weight(unet, "conv_in")
    assert torch.equal(w1[:, 2:], w0[:, 2:])
    torch.testing.assert_close(w1[:, :2], expected(w0[:, :2], down, up, 1.0), rtol=0, atol=1e-6)


def test_extra_children_and_motion_module_targets(unet):
    unet.down_blocks[0].motion_modules = nn.ModuleList([nn.Linear(8, 8)])
    name = "down_blocks.0.motion_modules.0"
    w_m, w_q = weight(unet, name), weight(unet, Q)
    dm, um = make_pair(w_m, 2, seed=95)
    dq, uq = make_pair(w_q, 2, seed=96)
    lora = {**kohya("lora_unet", name, dm, um), **kohya("lora_unet", "input_blocks.1.1.transformer_blocks.0.attn1.to_q",
                                                         dq, uq)}
    report = merge_lora(unet, None, lora, 1.0)
    assert sorted(report.merged_modules["unet"]) == sorted([name, Q])
    torch.testing.assert_close(weight(unet, name), expected(w_m, dm, um, 1.0), rtol=0, atol=1e-6)
    torch.testing.assert_close(weight(unet, Q), expected(w_q, dq, uq, 1.0), rtol=0, atol=1e-6)


def test_video_unet_names():
    """The Live2Diff VideoUNet (diffusers names + motion modules + flow_conv_in) resolves like a plain UNet."""
    from diffusers import UNet2DConditionModel

    from live2diff_core import VideoUNet

    torch.manual_seed(0)
    unet2d = UNet2DConditionModel(**{**UNET_CONFIG, "block_out_channels": (32, 32, 32, 32), "norm_num_groups": 32})
    lora = lcm_style_lora(unet2d)
    ref = copy.deepcopy(unet2d)
    merge_lora(ref, None, lora, 1.0)
    video = VideoUNet(unet2d)
    report = merge_lora(video, None, lora, 1.0)
    assert report.merged["unet"] == len(lora) // 3 and report.unresolved == []
    for n in (Q, PROJ_IN, CONV1, "up_blocks.0.upsamplers.0.conv"):
        assert torch.equal(weight(video, n), weight(ref, n))


# ---------------------------------------------------------------------------------------------------- files
def test_load_lora_file_formats(tmp_path, unet):
    from safetensors.torch import save_file

    down, up = make_pair(weight(unet, Q), 2, seed=97)
    sd = kohya("lora_unet", Q, down, up, 1.0)
    st = tmp_path / "style.safetensors"
    save_file(sd, str(st))
    loaded = load_lora_file(st)
    assert set(loaded) == set(sd) and all(torch.equal(loaded[k], sd[k]) for k in sd)

    pt = tmp_path / "style.ckpt"
    torch.save({"state_dict": sd, "global_step": 3}, str(pt))
    loaded = load_lora_file(str(pt))
    assert set(loaded) == set(sd)

    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_lora_file(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="junk.safetensors"):
        load_lora_file(junk)
    junk_pt = tmp_path / "junk.pt"
    junk_pt.write_bytes(b"\x00\x01garbage")
    with pytest.raises(ValueError, match="junk.pt"):
        load_lora_file(junk_pt)


def test_load_lora_file_peft_metadata_alphas(tmp_path, base_unet):
    from safetensors.torch import save_file

    names = [Q, PROJ_IN]
    sd, pairs = {}, {}
    for i, n in enumerate(names):
        pairs[n] = make_pair(weight(base_unet, n), 4, seed=98 + i)
        sd[f"unet.{n}.lora_A.weight"], sd[f"unet.{n}.lora_B.weight"] = pairs[n]
    meta = {"unet.r": 4, "unet.lora_alpha": 2, "unet.alpha_pattern": {"proj_in": 8}}
    path = tmp_path / "pytorch_lora_weights.safetensors"
    save_file(sd, str(path), metadata={"format": "pt", "lora_adapter_metadata": json.dumps(meta)})
    loaded = load_lora_file(path)
    assert float(loaded[f"unet.{Q}.alpha"]) == 2.0 and float(loaded[f"unet.{PROJ_IN}.alpha"]) == 8.0
    unet = copy.deepcopy(base_unet)
    merge_lora(unet, None, loaded, 1.0)
    torch.testing.assert_close(weight(unet, Q), expected(weight(base_unet, Q), *pairs[Q], 0.5), rtol=0, atol=1e-6)
    torch.testing.assert_close(weight(unet, PROJ_IN), expected(weight(base_unet, PROJ_IN), *pairs[PROJ_IN], 2.0),
                               rtol=0, atol=1e-6)
