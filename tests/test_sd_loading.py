"""SD1.5 base loading (diffusers folder / single-file LDM checkpoint), prompt encoding, TAESD and KL VAE.

Tiny random models with fixed seeds are built and saved in the real on-disk formats at test time. The single-file
LDM checkpoint is written with the test-side diffusers->LDM renaming of tests/tiny.py (diffusers ships only the
LDM->diffusers direction); the test first checks that diffusers' own converters map it back one-to-one.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, AutoencoderTiny, UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint
from safetensors.torch import save_file
from tiny import TINY_KL_VAE_CONFIG as TINY_VAE, bare_text_keys, state_dict_of, taesd_original_state_dicts, to_ldm
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from live2diff_core import sd_checkpoint as sdc
from live2diff_core.text_encoder import encode_prompt
from live2diff_core.vae import Vae, load_taesd, taesd_to_diffusers

CONFIGS = Path(sdc.__file__).resolve().parent / "configs"

TINY_UNET = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    block_out_channels=[32, 32, 64, 64],
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    layers_per_block=2,
    cross_attention_dim=32,
    attention_head_dim=8,
    norm_num_groups=8,
)
TINY_TEXT = dict(
    vocab_size=49408,
    hidden_size=32,
    intermediate_size=37,
    num_hidden_layers=12,
    num_attention_heads=4,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    bos_token_id=0,
    eos_token_id=2,
    pad_token_id=1,
    projection_dim=32,
)


def _assert_same(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for k in a:
        assert a[k].shape == b[k].shape and torch.equal(a[k], b[k]), k


# --------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**TINY_UNET)
    vae = AutoencoderKL(**TINY_VAE)
    text = CLIPTextModel(CLIPTextConfig(**TINY_TEXT))
    folder = root / "pipe"
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    text.save_pretrained(folder / "text_encoder")
    tok = folder / "tokenizer"
    tok.mkdir()
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(CONFIGS / "sd15" / "tokenizer" / name, tok / name)
    ref = {"unet": state_dict_of(unet), "vae": state_dict_of(vae), "text": bare_text_keys(state_dict_of(text))}
    files = {}
    for layout in ("t4", "t5"):
        files[layout] = root / f"single_{layout}.safetensors"
        save_file(to_ldm(ref["unet"], ref["vae"], ref["text"], text_layout=layout, unet_config=TINY_UNET),
                  str(files[layout]))
    files["ckpt"] = root / "single.ckpt"
    torch.save({"state_dict": to_ldm(ref["unet"], ref["vae"], ref["text"], text_layout="t4", unet_config=TINY_UNET),
                "global_step": 7},
               files["ckpt"])
    return {"root": root, "folder": folder, "files": files, "ref": ref}


# ------------------------------------------------------------------------------------ (a) formats load identically
def test_test_side_ldm_writer_is_inverse_of_diffusers_converters(tiny):
    ref = tiny["ref"]
    ldm = to_ldm(ref["unet"], ref["vae"], ref["text"], text_layout="t5", unet_config=TINY_UNET)
    unet_ldm = {k: v for k, v in ldm.items() if k.startswith("model.diffusion_model.")}
    assert len(unet_ldm) == len(ref["unet"])  # injective renaming
    _assert_same(convert_ldm_unet_checkpoint(unet_ldm, TINY_UNET), ref["unet"])
    vae_ldm = {k: v for k, v in ldm.items() if k.startswith("first_stage_model.")}
    assert len(vae_ldm) == len(ref["vae"])
    _assert_same(convert_ldm_vae_checkpoint(vae_ldm, TINY_VAE), ref["vae"])


@pytest.mark.parametrize("fmt", ["t4", "t5", "ckpt"])
def test_single_file_equals_diffusers_folder(tiny, fmt):
    folder, file, ref = tiny["folder"], tiny["files"][fmt], tiny["ref"]
    cfg = sdc.resolve_unet_config(folder)
    assert cfg["block_out_channels"] == TINY_UNET["block_out_channels"]
    unet_folder = sdc.load_unet_state_dict(folder, cfg)
    unet_file = sdc.load_unet_state_dict(file, cfg)
    _assert_same(unet_folder, ref["unet"])
    _assert_same(unet_file, unet_folder)

    vae_folder = sdc.load_sd_vae(folder)
    vae_file = sdc.load_sd_vae(file, config=TINY_VAE)
    assert isinstance(vae_file, AutoencoderKL) and not vae_file.training
    _assert_same(state_dict_of(vae_folder), ref["vae"])
    _assert_same(state_dict_of(vae_file), state_dict_of(vae_folder))

    tok_f, te_folder = sdc.load_text_encoder(folder)
    tok_s, te_file = sdc.load_text_encoder(file, text_config=TINY_TEXT)
    _assert_same(bare_text_keys(state_dict_of(te_folder)), ref["text"])
    _assert_same(state_dict_of(te_file), state_dict_of(te_folder))
    assert not any(p.is_meta for p in te_file.state_dict().values())
    ids = tok_s(["a photo of a cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert tok_f(["a photo of a cat"]).input_ids[0] == ids[0, :7].tolist()
    torch.testing.assert_close(te_file(ids).last_hidden_state, te_folder(ids).last_hidden_state, rtol=0, atol=0)


def test_folder_variants(tiny, tmp_path):
    folder, ref = tiny["folder"], tiny["ref"]
    # pointed at the unet/ sub-folder itself
    cfg = sdc.resolve_unet_config(folder / "unet")
    assert cfg["layers_per_block"] == 2
    _assert_same(sdc.load_unet_state_dict(folder / "unet", cfg), ref["unet"])
    # explicit config wins; a single file falls back to the shipped SD1.5 config
    assert sdc.resolve_unet_config(folder, {"a": 1}) == {"a": 1}
    assert sdc.resolve_unet_config(folder, CONFIGS / "sd15" / "unet")["block_out_channels"] == [320, 640, 1280, 1280]
    assert sdc.resolve_unet_config(tiny["files"]["t5"])["cross_attention_dim"] == 768
    # standalone vae folder and a standalone diffusers-named VAE file
    _assert_same(state_dict_of(sdc.load_sd_vae(folder / "vae")), ref["vae"])
    # standalone LDM-named VAE file (no first_stage_model. prefix, as vae-ft-mse-840000 ships)
    ldm = to_ldm(ref["unet"], ref["vae"], ref["text"], text_layout="t5", unet_config=TINY_UNET)
    bare_vae = {k.removeprefix("first_stage_model."): v for k, v in ldm.items() if k.startswith("first_stage_model.")}
    save_file(bare_vae, str(tmp_path / "vae_ldm.safetensors"))
    _assert_same(state_dict_of(sdc.load_sd_vae(tmp_path / "vae_ldm.safetensors", config=TINY_VAE)), ref["vae"])
    save_file(ref["vae"], str(tmp_path / "vae_diffusers.safetensors"))
    _assert_same(state_dict_of(sdc.load_sd_vae(tmp_path / "vae_diffusers.safetensors", config=TINY_VAE)), ref["vae"])
    # text encoder folder saved by transformers 4 (text_model.-prefixed keys + persistent position_ids), .bin weights
    pipe4 = tmp_path / "pipe4"
    shutil.copytree(folder, pipe4)
    (pipe4 / "text_encoder" / "model.safetensors").unlink()
    t4 = {f"text_model.{k}": v for k, v in ref["text"].items()}
    t4["text_model.embeddings.position_ids"] = torch.arange(77)[None]
    torch.save(t4, pipe4 / "text_encoder" / "pytorch_model.bin")
    _, te = sdc.load_text_encoder(pipe4, dtype=torch.float16)
    assert next(te.parameters()).dtype == torch.float16
    _assert_same(bare_text_keys(state_dict_of(te)), {k: v.half() for k, v in ref["text"].items()})


# --------------------------------------------------------------------------------------------- (b) error messages
def test_wrong_and_truncated_files(tiny, tmp_path):
    wrong = tmp_path / "wrong.safetensors"
    save_file({"foo.weight": torch.randn(3), "bar.bias": torch.randn(2)}, str(wrong))
    with pytest.raises(ValueError, match=r"wrong\.safetensors: not an SD1\.x checkpoint: no 'model\.diffusion_model"):
        sdc.load_unet_state_dict(wrong, TINY_UNET)
    with pytest.raises(ValueError, match="wrong.safetensors.*cond_stage_model"):
        sdc.load_text_encoder(wrong, text_config=TINY_TEXT)
    with pytest.raises(ValueError, match="wrong.safetensors: not an SD1.x VAE"):
        sdc.load_sd_vae(wrong, config=TINY_VAE)

    # an SD-like file with one tensor missing, one extra and one of the wrong shape
    ref = tiny["ref"]
    ldm = to_ldm(ref["unet"], ref["vae"], ref["text"], text_layout="t5", unet_config=TINY_UNET)
    ldm.pop("model.diffusion_model.out.2.bias")
    ldm["model.diffusion_model.input_blocks.99.0.weight"] = torch.zeros(1)
    ldm["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(32, 9, 3, 3)
    bad = tmp_path / "bad.safetensors"
    save_file(ldm, str(bad))
    with pytest.raises(ValueError) as err:
        sdc.load_unet_state_dict(bad, TINY_UNET)
    msg = str(err.value)
    assert "bad.safetensors: not an SD1.x UNet checkpoint" in msg
    assert "1 missing keys [conv_out.bias]" in msg
    assert "1 unexpected keys [model.diffusion_model.input_blocks.99.0.weight]" in msg
    assert "1 shape mismatches [conv_in.weight: (32, 9, 3, 3) != (32, 4, 3, 3)]" in msg
    # the real SD1.5 config against tiny weights: many mismatches, listing capped
    with pytest.raises(ValueError, match=r"shape mismatches \[.*, \.\.\.\]"):
        sdc.load_unet_state_dict(tiny["files"]["t5"], sdc.resolve_unet_config(None))
    with pytest.raises(ValueError, match="not an SD1.x text encoder checkpoint"):
        sdc.load_text_encoder(tiny["files"]["t5"])  # shipped 768-wide config vs tiny weights

    for name in ("t5", "ckpt"):
        src = tiny["files"][name]
        cut = tmp_path / f"cut_{src.name}"
        cut.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
        with pytest.raises(ValueError, match=rf"cut_{src.name}: cannot read .*truncated or corrupt"):
            sdc.load_unet_state_dict(cut, TINY_UNET)


def test_missing_paths(tiny, tmp_path):
    missing = tmp_path / "nope" / "model.safetensors"
    with pytest.raises(FileNotFoundError) as err:
        sdc.load_unet_state_dict(missing, TINY_UNET)
    assert str(missing) in str(err.value) and f"searched {missing.parent}" in str(err.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    for call in (
        lambda: sdc.load_unet_state_dict(empty, TINY_UNET),
        lambda: sdc.load_sd_vae(empty),
        lambda: sdc.load_text_encoder(empty),
        lambda: load_taesd(empty),
    ):
        with pytest.raises(FileNotFoundError, match=f"searched {empty}"):
            call()
    with pytest.raises(FileNotFoundError, match=f"searched {tiny['folder'] / 'unet'}"):
        sdc.load_sd_vae(tiny["folder"] / "unet")  # a UNet folder is not a VAE folder
    partial = tmp_path / "partial"
    shutil.copytree(tiny["folder"] / "unet", partial / "unet")
    (partial / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=rf"diffusion_pytorch_model\.safetensors.*searched {partial / 'unet'}"):
        sdc.load_unet_state_dict(partial, TINY_UNET)


# ---------------------------------------------------------------------------------------------- (c) encode_prompt
def test_encode_prompt_is_layer10_then_final_layer_norm(tiny):
    tokenizer, te = sdc.load_text_encoder(tiny["folder"])
    prompts = ["a photo of a cat", "masterpiece, best quality, felted, 1man with glasses"]
    emb = encode_prompt(tokenizer, te, prompts)
    assert emb.shape == (2, 77, 32)
    ids = tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        out = te(ids, output_hidden_states=True)
    assert len(out.hidden_states) == 13
    norm = getattr(te, "text_model", te).final_layer_norm
    torch.testing.assert_close(emb, norm(out.hidden_states[10]), rtol=0, atol=0)
    assert not torch.allclose(emb, out.last_hidden_state, atol=1e-3)
    torch.testing.assert_close(encode_prompt(tokenizer, te, prompts, clip_layer=12), out.last_hidden_state)
    # independent check of the layer count: a 10-layer copy of the same weights gives the same embedding
    cfg10 = dict(TINY_TEXT, num_hidden_layers=10)
    te10 = CLIPTextModel(CLIPTextConfig(**cfg10)).eval()
    missing, unexpected = te10.load_state_dict(te.state_dict(), strict=False)
    assert not missing and all(".layers.10." in k or ".layers.11." in k for k in unexpected)
    with torch.no_grad():
        torch.testing.assert_close(emb, te10(ids).last_hidden_state, rtol=1e-5, atol=1e-5)
    # single prompt, truncation of long prompts, validation
    assert encode_prompt(tokenizer, te, "a photo of a cat").shape == (1, 77, 32)
    assert encode_prompt(tokenizer, te, "cat " * 200).shape == (1, 77, 32)
    for bad in (0, 13, -3, True, 10.0):
        with pytest.raises(ValueError, match="clip_layer"):
            encode_prompt(tokenizer, te, "x", clip_layer=bad)


# ------------------------------------------------------------------------------------------------- (d) VAEs
def _taesd_reference():
    """The original TAESD encoder/decoder as two nn.Sequential (layout of madebyollin/taesd), for checking names."""
    from torch import nn

    def conv(i, o, **kw):
        return nn.Conv2d(i, o, 3, padding=1, **kw)

    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv = nn.Sequential(conv(c, c), nn.ReLU(), conv(c, c), nn.ReLU(), conv(c, c))
            self.skip = nn.Identity()
            self.fuse = nn.ReLU()

        def forward(self, x):
            return self.fuse(self.conv(x) + self.skip(x))

    class Clamp(nn.Module):
        def forward(self, x):
            return torch.tanh(x / 3) * 3

    down = lambda: conv(64, 64, stride=2, bias=False)
    up = lambda: [nn.Upsample(scale_factor=2), conv(64, 64, bias=False)]
    stage = lambda: [down(), Block(64), Block(64), Block(64)]
    enc = nn.Sequential(conv(3, 64), Block(64), *stage(), *stage(), *stage(), conv(64, 4))
    dec = nn.Sequential(Clamp(), conv(4, 64), nn.ReLU(), *[Block(64) for _ in range(3)], *up(),
                        *[Block(64) for _ in range(3)], *up(), *[Block(64) for _ in range(3)], *up(), Block(64),
                        conv(64, 3))
    return enc.eval(), dec.eval()


def test_taesd_layouts_identical(tmp_path):
    torch.manual_seed(0)
    tae = AutoencoderTiny.from_config(AutoencoderTiny.load_config(CONFIGS / "taesd"))
    tae.save_pretrained(tmp_path / "taesd_diffusers")
    sd = tae.state_dict()
    enc, dec = taesd_original_state_dicts(tae)  # the writer of every test's vae_approx files
    # the original TAESD modules accept exactly these files (strict), and the mapping is a key/shape bijection
    ref_enc, ref_dec = _taesd_reference()
    ref_enc.load_state_dict(enc, strict=True)
    ref_dec.load_state_dict(dec, strict=True)
    mapped = taesd_to_diffusers(ref_enc.state_dict(), ref_dec.state_dict())
    assert {k: v.shape for k, v in mapped.items()} == {k: v.shape for k, v in sd.items()}
    assert "1.conv.0.weight" in enc and "encoder.layers.1.conv.0.weight" in mapped
    comfy = tmp_path / "vae_approx"
    comfy.mkdir()
    save_file(enc, str(comfy / "taesd_encoder.safetensors"))
    save_file(dec, str(comfy / "taesd_decoder.safetensors"))

    a = Vae(load_taesd(tmp_path / "taesd_diffusers"))
    variants = [load_taesd(comfy), load_taesd(comfy / "taesd_decoder.safetensors"),
                load_taesd(comfy / "taesd_encoder.safetensors")]
    assert a.kind == "taesd" and a.scaling_factor == 1.0
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    z = a.encode(x)
    assert z.shape == (2, 4, 4, 4)
    y = a.decode(z)
    assert y.shape == (2, 3, 32, 32) and y.min() >= -1 and y.max() <= 1
    b = Vae(variants[0])
    assert torch.equal(b.encode(x), z) and torch.equal(b.decode(z), y)
    for model in variants:
        _assert_same(model.state_dict(), a.model.state_dict())
    # semantics against the original layout: [-1,1] <-> [0,1] conversion, decoder clamp, layer order
    with torch.no_grad():
        torch.testing.assert_close(z, ref_enc((x + 1) / 2), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(y, (ref_dec(z) * 2 - 1).clamp(-1, 1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.decode(z, chunk_size=1), y, rtol=1e-6, atol=1e-6)
    # a missing partner file is named
    (comfy / "taesd_decoder.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="taesd_decoder.safetensors"):
        load_taesd(comfy / "taesd_encoder.safetensors")


def test_kl_vae_wrapper(tiny):
    model = sdc.load_sd_vae(tiny["folder"])
    vae = Vae(model)
    assert vae.kind == "kl" and vae.scaling_factor == pytest.approx(0.18215)
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        dist = model.encode(x).latent_dist
        z = vae.encode(x, generator=torch.Generator().manual_seed(5))
        assert z.shape == (3, 4, 4, 4)
        torch.testing.assert_close(z, dist.sample(torch.Generator().manual_seed(5)) * 0.18215)
        zm = Vae(model, posterior="mode").encode(x, chunk_size=2)
        torch.testing.assert_close(zm, dist.mode() * 0.18215, rtol=1e-5, atol=1e-6)
        y = vae.decode(zm)
        assert y.shape == (3, 3, 32, 32) and y.min() >= -1 and y.max() <= 1
        torch.testing.assert_close(y, model.decode(zm / 0.18215).sample.clamp(-1, 1))
        torch.testing.assert_close(vae.decode(zm, chunk_size=1), y, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="posterior"):
        Vae(model, posterior="mean")
    with pytest.raises(TypeError):
        Vae(torch.nn.Linear(2, 2))


# ------------------------------------------------------------------------------------------------ (e) tokenizer
def test_shipped_tokenizer():
    import transformers

    classes = {transformers.CLIPTokenizer, getattr(transformers, "CLIPTokenizerFast", transformers.CLIPTokenizer)}
    for cls in classes:
        tok = cls.from_pretrained(str(CONFIGS / "sd15" / "tokenizer"), local_files_only=True)
        assert len(tok) == 49408
        assert tok.convert_tokens_to_ids(["<|startoftext|>", "<|endoftext|>"]) == [49406, 49407]
        assert tok.pad_token == "<|endoftext|>" and tok.model_max_length == 77
        assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
        padded = tok("a photo of a cat", padding="max_length", max_length=77, truncation=True).input_ids
        assert len(padded) == 77 and padded[7:] == [49407] * 70
        long = tok("cat " * 100, padding="max_length", max_length=77, truncation=True).input_ids
        assert len(long) == 77 and long[0] == 49406 and long[-1] == 49407
    vocab = json.loads((CONFIGS / "sd15" / "tokenizer" / "vocab.json").read_text(encoding="utf-8"))
    assert len(vocab) == 49408 and sorted(vocab.values()) == list(range(49408))
    merges = (CONFIGS / "sd15" / "tokenizer" / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges[0].startswith("#version") and len(merges) == 1 + 48894


# -------------------------------------------------------------------------------------------- (f) shipped configs
def test_shipped_configs_real_sizes():
    with torch.device("meta"):
        te = CLIPTextModel(CLIPTextConfig(**sdc.load_config(CONFIGS / "sd15" / "text_encoder")))
        vae = AutoencoderKL.from_config(sdc.load_config(CONFIGS / "sd15" / "vae"))
        tae = AutoencoderTiny.from_config(sdc.load_config(CONFIGS / "taesd"))
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(te) == 123_060_480
    assert count(vae) == 83_653_863
    assert count(tae) == 2_445_063
    assert te.config.hidden_size == 768 and te.config.num_hidden_layers == 12 and te.config.vocab_size == 49408
    assert te.config.max_position_embeddings == 77 and te.config.hidden_act == "quick_gelu"
    assert vae.config.scaling_factor == 0.18215 and tae.config.scaling_factor == 1.0
    assert isinstance(CLIPTokenizer.from_pretrained(str(CONFIGS / "sd15" / "tokenizer")), CLIPTokenizer)
