"""Tiny random models in the real on-disk formats, laid out as a ComfyUI ``models/`` folder.

Written by the *system* Python (the test process) before the server starts; the server (its own venv) then finds
them through ``folder_paths`` under ``RUN_DIR/models``. Fixed seeds: building twice gives identical tensors, so a
test can rebuild a reference in-process from the same files (see :meth:`TinyModels.live2diff_pipeline`).

Layout (names as ComfyUI lists them, relative to their folder)::

    models/diffusers/tiny-sd15/            SD1.5 diffusers pipeline folder: model_index.json, unet/ (tiny
                                           UNet2DConditionModel, tests/tiny.py TINY_UNET_CONFIG), text_encoder/
                                           (tiny 12-layer CLIP, hidden 32), tokenizer/ (the shipped SD1.5 one),
                                           vae/ (tiny AutoencoderKL), scheduler/ (shipped)
    models/checkpoints/tiny-sd15.safetensors   the same weights as one LDM single file (model.diffusion_model.,
                                           first_stage_model., cond_stage_model.transformer.text_model.)
    models/live2diff/live2diff.ckpt        torch pickle {"state_dict": motion modules + flow_conv_in}, matching
                                           the tiny UNet
    models/live2diff/dpt_hybrid_tiny/      transformers DPT-Hybrid folder (config.json + model.safetensors),
                                           tests/tiny.py TINY_DPT_CONFIG (input 64x64)
    models/vae_approx/taesd_encoder.safetensors, taesd_decoder.safetensors
                                           real TAESD architecture, random weights, original TAESD names
    models/loras/lcm-tiny.safetensors      kohya LoRA (diffusers-style lora_unet_* names) on 2 UNet modules
    models/loras/style-tiny.safetensors    kohya LoRA on 2 other UNet modules + 1 text-encoder module
    models/diffusers/tiny-modelscope/      ModelScope text-to-video diffusers folder: model_index.json, unet/
                                           (tiny UNet3DConditionModel, tests/st2v_tiny.py), text_encoder/ (CLIP,
                                           hidden 1024, 1 layer), tokenizer/, vae/, scheduler/ (shipped)
    models/streamingt2v/tiny-st2v.base.safetensors, .cam.safetensors, .apm.safetensors
                                           converted StreamingT2V parts of tests/st2v_tiny.tiny_st2v_model
    models/streamingt2v/tiny-st2v.config.json  its UNet3D config (== tiny-modelscope/unet/config.json)
    models/clip_vision/tiny-clip-vit.safetensors  APM image encoder (transformers CLIPVisionModelWithProjection
                                           layout, ViT hidden 64, projection 1024)
    models/clip_vision/tiny-clip-vit.config.json  its CLIPVisionConfig
    models/tiny_models.json                manifest (this layout, as JSON)

Non-standard sizes: a single-file checkpoint carries no config, and the loaders' defaults are the real SD1.5 /
ModelScope / ViT-H-14 configs. ``tiny-sd15.safetensors`` therefore loads only with the tiny config (e.g. the
``tiny-sd15`` folder as ``config``), the StreamingT2V parts only with ``tiny-st2v.config.json`` (or the
``tiny-modelscope/unet`` folder) as ``base_config``, and the CLIP vision file only with its ``.config.json``.

The models and their on-disk writers are the unit tests' (``tests/tiny.py``, ``tests/st2v_tiny.py``); this module
only chooses the seeds and the names and lays them out as ComfyUI's folders.

Standalone: ``python tests/integration/tiny_models.py RUN_DIR`` writes ``RUN_DIR/models`` (for a hand-started
server: ``comfyui_setup.sh`` with ``RUN_DIR=...``).
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"

SD15 = "tiny-sd15"
CHECKPOINT = "tiny-sd15.safetensors"
MOTION = "live2diff.ckpt"
DEPTH = "dpt_hybrid_tiny"
TAESD = ("taesd_encoder.safetensors", "taesd_decoder.safetensors")
LCM_LORA = "lcm-tiny.safetensors"
STYLE_LORA = "style-tiny.safetensors"
MODELSCOPE = "tiny-modelscope"
ST2V = "tiny-st2v"
CLIP_VISION = "tiny-clip-vit.safetensors"
REFINER = "tiny-zeroscope-xl"
CLIP_MODEL = "tiny-clip"

SEEDS = dict(unet=2, text=3, taesd=4, depth=5, vae=6, lora=7, st2v=8, modelscope=9, refiner=11, clip=13)


@dataclasses.dataclass(frozen=True)
class TinyModels:
    """Where the tiny models are. Attribute values are the names ComfyUI's combo lists show (relative to the
    model folder); :meth:`path` gives the absolute path."""

    run_dir: Path
    models_dir: Path
    sd15_diffusers: str = SD15  # models/diffusers/<name>/
    checkpoint: str = CHECKPOINT  # models/checkpoints/<name>
    motion: str = MOTION  # models/live2diff/<name>
    depth: str = DEPTH  # models/live2diff/<name>/ (folder)
    taesd_encoder: str = TAESD[0]  # models/vae_approx/<name>
    taesd_decoder: str = TAESD[1]
    lcm_lora: str = LCM_LORA  # models/loras/<name>
    style_lora: str = STYLE_LORA
    modelscope_diffusers: str = MODELSCOPE  # models/diffusers/<name>/
    st2v_base: str = f"{ST2V}.base.safetensors"  # models/streamingt2v/<name> (+ .cam/.apm siblings)
    st2v_config: str = f"{ST2V}.config.json"  # models/streamingt2v/<name>
    clip_vision: str = CLIP_VISION  # models/clip_vision/<name>
    clip_vision_config: str = "tiny-clip-vit.config.json"  # models/clip_vision/<name>
    refiner: str = REFINER  # models/diffusers/<name>/ (zeroscope-XL-class refiner)
    clip_model: str = CLIP_MODEL  # models/clip/<name>/ (transformers CLIPModel, for the CLIP score)
    #: working size the tiny models are meant for (multiple of 64; latent 8x8)
    width: int = 64
    height: int = 64

    # --------------------------------------------------------------------------------------------- paths
    def path(self, folder: str, name: str) -> Path:
        """``models/<folder>/<name>`` (e.g. ``path("live2diff", m.motion)``)."""
        return self.models_dir / folder / name

    @property
    def paths(self) -> dict[str, Path]:
        p = self.path
        return {
            "sd15_diffusers": p("diffusers", self.sd15_diffusers),
            "checkpoint": p("checkpoints", self.checkpoint),
            "motion": p("live2diff", self.motion),
            "depth": p("live2diff", self.depth),
            "vae_approx": self.models_dir / "vae_approx",
            "taesd_encoder": p("vae_approx", self.taesd_encoder),
            "taesd_decoder": p("vae_approx", self.taesd_decoder),
            "lcm_lora": p("loras", self.lcm_lora),
            "style_lora": p("loras", self.style_lora),
            "modelscope_diffusers": p("diffusers", self.modelscope_diffusers),
            "st2v_base": p("streamingt2v", self.st2v_base),
            "st2v_cam": p("streamingt2v", f"{ST2V}.cam.safetensors"),
            "st2v_apm": p("streamingt2v", f"{ST2V}.apm.safetensors"),
            "st2v_config": p("streamingt2v", self.st2v_config),
            "clip_vision": p("clip_vision", self.clip_vision),
            "clip_vision_config": p("clip_vision", self.clip_vision_config),
        }

    def manifest(self) -> dict[str, Any]:
        return {"run_dir": str(self.run_dir), "models_dir": str(self.models_dir),
                "names": {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                          if f.name not in ("run_dir", "models_dir")},
                "paths": {k: str(v) for k, v in self.paths.items()}}

    # ----------------------------------------------------------------------------- in-process references
    def live2diff_pipeline(self, *, depth: bool = True, lcm_lora: bool = False, style_lora: float | None = None,
                           lora_mode: str = "standard", **kw):
        """``Live2DiffPipeline.from_files`` on these very files (system Python, CPU, float32): the reference a
        node test compares the server's output with."""
        from live2diff_core import Live2DiffPipeline

        p = self.paths
        return Live2DiffPipeline.from_files(
            p["sd15_diffusers"], p["motion"], taesd=p["vae_approx"], depth=p["depth"] if depth else None,
            lcm_lora=p["lcm_lora"] if lcm_lora else None,
            loras=[(p["style_lora"], style_lora)] if style_lora is not None else (), lora_mode=lora_mode, **kw)

    def streaming_t2v_pipeline(self, **kw):
        """``StreamingT2VPipeline.from_files`` on these files (system Python, CPU, float32)."""
        from streaming_t2v_core.pipeline import StreamingT2VPipeline

        p = self.paths
        return StreamingT2VPipeline.from_files(p["modelscope_diffusers"], p["st2v_base"],
                                               image_encoder=p["clip_vision"], base_config=p["st2v_config"],
                                               image_encoder_config=p["clip_vision_config"], **kw)


# ---------------------------------------------------------------------------------------------------- writers
def _ensure_importable() -> None:
    """tests/ on sys.path (for tiny.py & co) and the cores importable without the repo root on sys.path (the pack's
    ``nodes/`` must never shadow ComfyUI's ``nodes``): the same bootstrap as tests/conftest.py."""
    import importlib.util

    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    for name in ("live2diff_core", "streaming_t2v_core"):
        if name in sys.modules:
            continue
        spec = importlib.util.spec_from_file_location(name, REPO / name / "__init__.py",
                                                      submodule_search_locations=[str(REPO / name)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=list) + "\n")


def _write_live2diff(models: Path) -> None:
    from safetensors.torch import save_file

    from tiny import (TAESD_FILES, bare_text_keys, kohya_lora, split_video_unet, state_dict_of, tiny_dpt,
                      tiny_kl_vae, tiny_taesd, tiny_text_encoder, tiny_video_unet, to_ldm, write_motion_ckpt,
                      write_sd15_folder, write_taesd_vae_approx)

    # --- SD1.5 diffusers folder (spatial UNet, text encoder, KL VAE, shipped tokenizer + scheduler)
    u2d, motion = split_video_unet(tiny_video_unet(seed=SEEDS["unet"]))
    _, text = tiny_text_encoder(seed=SEEDS["text"])
    vae = tiny_kl_vae(seed=SEEDS["vae"])
    write_sd15_folder(models / "diffusers" / SD15, u2d, text, vae=vae, pipeline=True)

    # --- the same weights as one LDM single file
    ldm = to_ldm(state_dict_of(u2d), state_dict_of(vae), bare_text_keys(state_dict_of(text)), text_layout="t5")
    (models / "checkpoints").mkdir(parents=True, exist_ok=True)
    save_file(ldm, str(models / "checkpoints" / CHECKPOINT))

    # --- motion modules + depth mapping (flow_conv_in), official pickle layout; the depth estimator folder
    write_motion_ckpt(motion, models / "live2diff" / MOTION)
    tiny_dpt(seed=SEEDS["depth"]).save_pretrained(models / "live2diff" / DEPTH)

    # --- TAESD in ComfyUI's vae_approx layout (original names)
    assert TAESD == TAESD_FILES
    write_taesd_vae_approx(tiny_taesd(seed=SEEDS["taesd"]), models / "vae_approx", TAESD)

    # --- LoRAs (kohya, diffusers-style module names)
    usd, tsd = u2d.state_dict(), text.state_dict()
    te_q = next(k for k in tsd if k.endswith("layers.0.self_attn.q_proj.weight"))
    lcm = kohya_lora(usd, {
        "lora_unet_down_blocks_0_attentions_0_proj_in": "down_blocks.0.attentions.0.proj_in.weight",
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q":
            "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight",
    }, rank=4, alpha=2.0, seed=SEEDS["lora"])
    style = kohya_lora({**usd, **tsd}, {
        "lora_unet_down_blocks_0_attentions_1_proj_in": "down_blocks.0.attentions.1.proj_in.weight",
        "lora_unet_up_blocks_3_attentions_0_transformer_blocks_0_attn2_to_k":
            "up_blocks.3.attentions.0.transformer_blocks.0.attn2.to_k.weight",
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj": te_q,
    }, rank=4, alpha=4.0, seed=SEEDS["lora"] + 1)
    (models / "loras").mkdir(parents=True, exist_ok=True)
    save_file(lcm, str(models / "loras" / LCM_LORA))
    save_file(style, str(models / "loras" / STYLE_LORA))


def _write_streaming_t2v(models: Path) -> None:
    import tempfile

    import torch
    from diffusers import AutoencoderKL, UNet3DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    from st2v_tiny import (TINY_ST2V_TEXT_CONFIG, TINY_ST2V_UNET_CONFIG, TINY_ST2V_VAE_CONFIG, TINY_ST2V_VIT_CONFIG,
                           tiny_st2v_model, write_modelscope_folder, write_st2v_parts)

    torch.manual_seed(SEEDS["modelscope"])  # one random stream for the three parts, in this order
    first = UNet3DConditionModel(**TINY_ST2V_UNET_CONFIG).eval()
    text = CLIPTextModel(CLIPTextConfig(**TINY_ST2V_TEXT_CONFIG)).eval()
    vae = AutoencoderKL(**TINY_ST2V_VAE_CONFIG).eval()
    write_modelscope_folder(models / "diffusers" / MODELSCOPE, first, text, vae, pipeline=True)

    out = models / "streamingt2v"
    write_st2v_parts(tiny_st2v_model(seed=SEEDS["st2v"]), out, ST2V)
    _write_json(out / f"{ST2V}.config.json", dict(TINY_ST2V_UNET_CONFIG))

    torch.manual_seed(SEEDS["st2v"] + 1)
    vision = CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY_ST2V_VIT_CONFIG)).eval()
    cv = models / "clip_vision"
    cv.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        vision.save_pretrained(tmp)
        shutil.copy(Path(tmp) / "model.safetensors", cv / CLIP_VISION)
        shutil.copy(Path(tmp) / "config.json", cv / "tiny-clip-vit.config.json")


def _write_refiner_and_clip(models: Path) -> None:
    """A zeroscope-XL-class refiner folder (tiny UNet3D, KL VAE, CLIP text with 16 tokens) and a transformers
    CLIPModel folder for the CLIP score."""
    import torch
    from diffusers import AutoencoderKL, UNet3DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from st2v_tiny import (TINY_REFINER_TEXT_CONFIG, TINY_REFINER_UNET_CONFIG, TINY_REFINER_VAE_CONFIG,
                           TOKENIZER_DIR, tiny_clip_model, write_modelscope_folder)

    ref = models / "diffusers" / REFINER
    shutil.rmtree(ref, ignore_errors=True)
    torch.manual_seed(SEEDS["refiner"])  # one random stream for the three parts, in this order
    unet = UNet3DConditionModel(**TINY_REFINER_UNET_CONFIG).eval()
    vae = AutoencoderKL(**TINY_REFINER_VAE_CONFIG).eval()
    text = CLIPTextModel(CLIPTextConfig(**TINY_REFINER_TEXT_CONFIG)).eval()
    write_modelscope_folder(ref, unet, text, vae, pipeline=True)
    tc = json.loads((ref / "tokenizer" / "tokenizer_config.json").read_text())
    _write_json(ref / "tokenizer" / "tokenizer_config.json", {**tc, "model_max_length": 16})

    clip = models / "clip" / CLIP_MODEL
    shutil.rmtree(clip, ignore_errors=True)
    tiny_clip_model(seed=SEEDS["clip"]).save_pretrained(clip)
    for f in TOKENIZER_DIR.iterdir():
        if f.is_file() and f.suffix != ".py":
            shutil.copy(f, clip / f.name)


def write_tiny_models(run_dir: str | Path, *, streaming_t2v: bool = True) -> TinyModels:
    """Write every tiny model under ``run_dir/models`` (replacing earlier copies) and return where they are."""
    _ensure_importable()
    import torch

    run_dir = Path(run_dir).resolve()
    models = run_dir / "models"
    for sub in (f"diffusers/{SD15}", f"diffusers/{MODELSCOPE}", f"live2diff/{DEPTH}"):
        shutil.rmtree(models / sub, ignore_errors=True)
    models.mkdir(parents=True, exist_ok=True)
    from transformers.utils import logging as hf_logging

    threads = torch.get_num_threads()
    rng = torch.random.get_rng_state()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # "Writing model shards" bars of save_pretrained
    try:
        _write_live2diff(models)
        if streaming_t2v:
            _write_streaming_t2v(models)
            _write_refiner_and_clip(models)
    finally:
        torch.random.set_rng_state(rng)
        torch.set_num_threads(threads)
        if bars:
            hf_logging.enable_progress_bar()
    tm = TinyModels(run_dir=run_dir, models_dir=models)
    _write_json(models / "tiny_models.json", tm.manifest())
    return tm


if __name__ == "__main__":
    import argparse
    import time

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", help="ComfyUI base directory (--base-directory / comfyui_setup.sh RUN_DIR)")
    ap.add_argument("--no-streaming-t2v", action="store_true", help="only the Live2Diff models")
    a = ap.parse_args()
    t0 = time.perf_counter()
    tm = write_tiny_models(a.run_dir, streaming_t2v=not a.no_streaming_t2v)
    print(json.dumps(tm.manifest(), indent=2))
    print(f"written in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
