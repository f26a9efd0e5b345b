"""Live2DiffPipeline.from_files on every on-disk format the loaders accept (tiny random models)."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from tiny import tiny_dpt, tiny_taesd, tiny_text_encoder, tiny_video_unet, write_live2diff_files

from live2diff_core import Live2DiffPipeline, Vae
from live2diff_core.depth import DepthEstimator

SETTINGS = dict(width=64, height=64, t_index_list=(30, 40), seed=5)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("files")
    unet = tiny_video_unet(seed=2)
    tok, text = tiny_text_encoder(seed=3)
    taesd = tiny_taesd(seed=4)
    dpt = tiny_dpt(seed=5)
    write_live2diff_files(root, unet=unet, text=text, taesd=taesd)
    dpt.save_pretrained(root / "dpt-hybrid-midas")
    reference = Live2DiffPipeline(unet, Vae(taesd), tok, text, DepthEstimator(dpt))
    return root, reference


def test_from_files_equals_in_memory_pipeline(models):
    root, reference = models
    pipe = Live2DiffPipeline.from_files(root / "sd15", root / "live2diff.ckpt", taesd=root / "vae_approx",
                                        depth=root / "dpt-hybrid-midas")
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(10, 64, 64, 3, generator=g)
    got = pipe(frames, "a red fox", **SETTINGS)
    ref = reference(frames, "a red fox", **SETTINGS)
    assert got.shape == frames.shape
    torch.testing.assert_close(got, ref, atol=2e-3, rtol=0)
    for name in ("unet", "text_encoder", "vae", "depth_estimator"):  # every component loaded bit-exactly
        a, b = getattr(pipe, name).state_dict(), getattr(reference, name).state_dict()
        assert a.keys() == b.keys(), name
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_from_files_merges_lcm_and_style_loras(models, tmp_path):
    root, reference = models
    g = torch.Generator().manual_seed(1)
    rank, alpha = 4, 2.0
    target = "lora_unet_down_blocks_0_attentions_0_proj_in"
    w = reference.unet.down_blocks[0].attentions[0].proj_in.weight  # [32, 32] linear (use_linear_projection=False: conv)
    down = torch.randn(rank, *w.shape[1:], generator=g) * 0.1
    up = torch.randn(w.shape[0], rank, *([1] * (w.dim() - 2)), generator=g) * 0.1
    lcm = {f"{target}.lora_down.weight": down, f"{target}.lora_up.weight": up, f"{target}.alpha": torch.tensor(alpha)}
    save_file(lcm, tmp_path / "lcm.safetensors")
    style = {k.replace("attentions_0_proj_in", "attentions_1_proj_in"): v for k, v in lcm.items()}
    save_file(style, tmp_path / "style.safetensors")
    pipe = Live2DiffPipeline.from_files(root / "sd15", root / "live2diff.ckpt", taesd=root / "vae_approx",
                                        lcm_lora=tmp_path / "lcm.safetensors",
                                        loras=[(tmp_path / "style.safetensors", 0.5)], lora_mode="official")
    delta = (up.flatten(1) @ down.flatten(1)).reshape(w.shape)
    got0 = pipe.unet.down_blocks[0].attentions[0].proj_in.weight
    torch.testing.assert_close(got0, w + alpha / rank * delta, atol=1e-6, rtol=0)
    w1 = reference.unet.down_blocks[0].attentions[1].proj_in.weight
    got1 = pipe.unet.down_blocks[0].attentions[1].proj_in.weight
    torch.testing.assert_close(got1, w1 + 0.5 * delta, atol=1e-6, rtol=0)  # official: alpha ignored
    # the cached reference model is untouched (loading never mutates another pipeline's weights)
    assert not torch.equal(got0, w)


def test_nan_lora_file_fails_naming_the_file(models, tmp_path):
    root, reference = models
    target = "lora_unet_down_blocks_0_attentions_0_proj_in"
    w = reference.unet.down_blocks[0].attentions[0].proj_in.weight
    up = torch.full((w.shape[0], 4, *([1] * (w.dim() - 2))), float("nan"))
    save_file({f"{target}.lora_down.weight": torch.ones(4, *w.shape[1:]), f"{target}.lora_up.weight": up},
              tmp_path / "diverged.safetensors")
    with pytest.raises(ValueError, match="LoRA diverged.safetensors: NaN/Inf values .*pick another LoRA"):
        Live2DiffPipeline.from_files(root / "sd15", root / "live2diff.ckpt", taesd=root / "vae_approx",
                                     loras=[(tmp_path / "diverged.safetensors", 1.0)])


def test_missing_files_name_the_folder(models, tmp_path):
    root, _ = models
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        Live2DiffPipeline.from_files(root / "sd15", root / "live2diff.ckpt", taesd=tmp_path / "nothing_here")
    with pytest.raises(FileNotFoundError, match="dpt"):
        Live2DiffPipeline.from_files(root / "sd15", root / "live2diff.ckpt", taesd=root / "vae_approx",
                                     depth=tmp_path / "dpt_hybrid_384.pt")


def test_cli_translates_a_folder_of_frames(models, tmp_path):
    import numpy as np
    from PIL import Image

    from live2diff_core.cli import main

    root, _ = models
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(9):
        Image.fromarray(rng.integers(0, 255, (40, 72, 3), dtype=np.uint8)).save(src / f"f{i:02d}.png")
    out = tmp_path / "out"
    rc = main(["--base", str(root / "sd15"), "--motion", str(root / "live2diff.ckpt"), "--taesd",
               str(root / "vae_approx"), "--depth", str(root / "dpt-hybrid-midas"), "--input", str(src),
               "--output", str(out), "--prompt", "a fox", "--width", "64", "--height", "64", "--device", "cpu",
               "--lcm-lora", "none"])
    assert rc == 0
    written = sorted(out.glob("*.png"))
    assert len(written) == 9
    assert Image.open(written[0]).size == (72, 40)
