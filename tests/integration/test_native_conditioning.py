"""Live2Diff nodes take ComfyUI's own CONDITIONING (issue 12): CLIP Text Encode on an SD1.5 CLIP after
CLIPSetLastLayer -3 is the official layer, the same embedding as Live2Diff Encode Prompt's clip_layer 10.

A random *real-size* SD1.5 CLIP ViT-L text encoder (123M parameters) is both the Live2Diff base's text encoder and,
through a link in models/text_encoders, what ComfyUI's CLIPLoader reads; a tiny UNet with cross-attention width 768
consumes either embedding. Both paths then translate the same clip with the same seed: the frames agree to the 8-bit
rounding of the output, while the neighbouring layer (CLIPSetLastLayer -2) gives clearly different frames."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from client import Graph

BASE = "l2d-clip768"
CLIP_FILE = "sd15-clip-l-random.safetensors"
TAESD = "taesd (vae_approx/taesd_encoder + taesd_decoder)"
TEXT = "a felted fox in the snow"


@pytest.fixture(scope="module")
def clip768_base(comfy_server, comfy_models):
    """models/diffusers/l2d-clip768 (tiny UNet with cross-attention 768, the real-size random CLIP, the SD1.5
    tokenizer) and models/text_encoders/sd15-clip-l-random.safetensors linking to its text encoder."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file
    from tiny import TINY_UNET_CONFIG
    from transformers import CLIPTextConfig, CLIPTextModel

    from live2diff_core.sd_checkpoint import SHIPPED_CONFIG_DIR

    models = Path(comfy_server.server.run_dir) / "models"
    base = models / "diffusers" / BASE
    if not (base / "text_encoder").is_dir():
        torch.manual_seed(11)
        UNet2DConditionModel(**{**TINY_UNET_CONFIG, "cross_attention_dim": 768}).save_pretrained(base / "unet")
        config = CLIPTextConfig.from_pretrained(SHIPPED_CONFIG_DIR / "text_encoder")
        torch.manual_seed(12)
        # the keys as Hugging Face's SD1.5 and ComfyUI's text_encoders files carry them (``text_model.*``), which
        # both loaders read (a recent transformers saves them without the prefix, which ComfyUI would not load)
        (base / "text_encoder").mkdir(parents=True)
        config.save_pretrained(base / "text_encoder")
        weights = {f"text_model.{k}".replace("text_model.text_model.", "text_model."): v.contiguous()
                   for k, v in CLIPTextModel(config).state_dict().items()}
        save_file(weights, str(base / "text_encoder" / "model.safetensors"), metadata={"format": "pt"})
        shutil.copytree(SHIPPED_CONFIG_DIR / "tokenizer", base / "tokenizer")
        (base / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    link = models / "text_encoders" / CLIP_FILE
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.symlink_to(base / "text_encoder" / "model.safetensors")
    return comfy_models


def _translate(comfy, m, native_layer: int | None) -> np.ndarray:
    g = Graph()
    model = g.node("L2D_LoadModel", base=f"diffusers/{BASE}", motion=m.motion, vae=TAESD, depth_model="none",
                   lcm_lora="none", dtype="float32")
    if native_layer is None:
        cond = g.node("L2D_EncodePrompt", model=model.out(0), text=TEXT, clip_layer=10)
    else:
        clip = g.node("CLIPLoader", clip_name=CLIP_FILE, type="stable_diffusion")
        clip = g.node("CLIPSetLastLayer", clip=clip.out(0), stop_at_clip_layer=native_layer)
        cond = g.node("CLIPTextEncode", clip=clip.out(0), text=TEXT)
    frames = g.node("EmptyImage", width=64, height=64, batch_size=10, color=0x8844CC)
    out = g.node("L2D_VideoToVideo", model=model.out(0), images=frames.out(0), conditioning=cond.out(0),
                 t_index_list="0,25", strength=0.0, steps=50, width=64, height=64, seed=3, use_depth=False,
                 invert_depth=False)  # from full noise: the prompt weighs most
    shown = g.node("PreviewImage", images=out.out(0))
    entry = comfy.run(g.prompt(), timeout=300)
    return np.stack([np.asarray(im, dtype=np.int16) for im in comfy.read_images(entry, shown.id)])


def test_the_socket_takes_both_types(comfy):
    spec = comfy.object_info("L2D_VideoToVideo")["input"]["required"]["conditioning"]
    assert set(spec[0].split(",")) == {"L2D_CONDITIONING", "CONDITIONING"}


def test_clip_text_encode_at_layer_minus_3_equals_encode_prompt_layer_10(comfy, clip768_base):
    ours = _translate(comfy, clip768_base, None)
    native = _translate(comfy, clip768_base, -3)
    other_layer = _translate(comfy, clip768_base, -2)
    same = np.abs(ours - native)
    different = np.abs(ours - other_layer).mean()
    print(f"ours vs CLIPSetLastLayer -3: max {same.max()}, mean {same.mean():.4f}; vs -2: mean {different:.4f}")
    # the same embedding up to ComfyUI keeping text-encoder weights in float16 (next test), which starting from full
    # noise moves some pixels by a level or two; the neighbouring layer moves them several times more
    assert same.max() <= 3 and same.mean() < 0.15, (same.max(), same.mean())
    assert different > 2.5 * same.mean(), (different, same.mean())


COMFY_ENCODE = """
import sys, torch
sys.argv = ["main.py", "--cpu"] + sys.argv[3:]
sys.path.insert(0, {comfy_dir!r})
import comfy.options; comfy.options.enable_args_parsing()
import comfy.sd
clip = comfy.sd.load_clip(ckpt_paths=[{clip!r}], clip_type=comfy.sd.CLIPType.STABLE_DIFFUSION)
out = {{}}
for layer in (-3, -2):
    c = clip.clone(); c.clip_layer(layer)
    out[layer] = c.encode_from_tokens_scheduled(c.tokenize({text!r}))[0][0].float()
torch.save(out, {dest!r})
"""


@pytest.mark.parametrize("flags,tolerance", [([], 5e-3), (["--fp32-text-enc"], 1e-4)])
def test_the_embeddings_themselves_agree(comfy_server, clip768_base, tmp_path, flags, tolerance):
    """ComfyUI's own CLIP code (in the server's venv, as the server runs it) against the pack's encoder on the same
    file: equal at CLIPSetLastLayer -3 up to ComfyUI's float16 weights (exact to 1e-4 with --fp32-text-enc), far
    apart at -2."""
    import subprocess

    from transformers import CLIPTextModel, CLIPTokenizer

    from live2diff_core.text_encoder import encode_prompt

    info = comfy_server.server
    base = Path(info.run_dir) / "models" / "diffusers" / BASE
    dest = tmp_path / "comfy.pt"
    script = COMFY_ENCODE.format(comfy_dir=str(info.comfy_dir), clip=str(base / "text_encoder" / "model.safetensors"),
                                 text=TEXT, dest=str(dest))
    python = str(Path(info.venv) / "bin" / "python") if info.venv else sys.executable
    subprocess.run([python, "-c", script, "x", "y", *flags], cwd=info.comfy_dir, check=True, capture_output=True,
                   timeout=300)
    comfy = torch.load(dest)
    ours = encode_prompt(CLIPTokenizer.from_pretrained(base / "tokenizer"),
                         CLIPTextModel.from_pretrained(base / "text_encoder").eval(), TEXT, clip_layer=10)
    assert (comfy[-3] - ours).abs().max() <= tolerance
    assert (comfy[-2] - ours).abs().mean() > 0.1  # the neighbouring layer: hundreds of times further


def test_a_conditioning_of_the_wrong_width_is_refused_with_what_to_do(comfy, comfy_models, clip768_base):
    """The tiny Live2Diff base has cross-attention width 32: a 768-wide CONDITIONING is refused by name."""
    m = comfy_models
    g = Graph()
    model = g.node("L2D_LoadModel", base=f"diffusers/{m.sd15_diffusers}", motion=m.motion, vae=TAESD,
                   depth_model="none", lcm_lora="none", dtype="float32")
    clip = g.node("CLIPLoader", clip_name=CLIP_FILE, type="stable_diffusion")
    cond = g.node("CLIPTextEncode", clip=clip.out(0), text=TEXT)
    frames = g.node("EmptyImage", width=64, height=64, batch_size=8, color=0)
    out = g.node("L2D_VideoToVideo", model=model.out(0), images=frames.out(0), conditioning=cond.out(0),
                 t_index_list="30,40", strength=0.0, steps=50, width=64, height=64, seed=3, use_depth=False,
                 invert_depth=False)
    g.node("PreviewImage", images=out.out(0))
    entry = comfy.run(g.prompt(), expect="error", timeout=300)
    assert "conditioning has width 768 but this model's UNet takes 32" in entry.error["exception_message"]
