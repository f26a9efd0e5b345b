"""Optional downloads of the official weights (only when a user runs a download node; never at import).

Pure Python on top of ``huggingface_hub``: no ComfyUI import here, so the catalog and the download loop are
unit-tested on their own (tests/test_downloads.py loads this file directly).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class Download:
    """``files``: (file in the Hugging Face repo, path under the ComfyUI model folder ``folder``)."""

    repo_id: str
    folder: str
    files: tuple[tuple[str, str], ...]
    note: str = ""


CATALOG: dict[str, Download] = {
    "live2diff.ckpt (motion modules + depth mapping, 1.7 GB)": Download(
        "Leoxing/Live2Diff", "live2diff", (("live2diff.ckpt", "live2diff.ckpt"),)),
    "Intel/dpt-hybrid-midas (depth estimator, 0.5 GB)": Download(
        "Intel/dpt-hybrid-midas", "live2diff",
        (("config.json", "dpt-hybrid-midas/config.json"), ("model.safetensors", "dpt-hybrid-midas/model.safetensors"))),
    "TAESD (tiny VAE, 10 MB)": Download(
        "madebyollin/taesd", "vae_approx",
        (("config.json", "taesd/config.json"),
         ("diffusion_pytorch_model.safetensors", "taesd/diffusion_pytorch_model.safetensors"))),
    "LCM-LoRA SD1.5 (135 MB)": Download(
        "latent-consistency/lcm-lora-sdv1-5", "loras",
        (("pytorch_lora_weights.safetensors", "lcm-lora-sdv1-5.safetensors"),)),
    "streaming_t2v.ckpt (25 GB; convert it afterwards)": Download(
        "PAIR/StreamingT2V", "streamingt2v", (("streaming_t2v.ckpt", "streaming_t2v.ckpt"),),
        note="then run: python -m streaming_t2v_core.convert models/streamingt2v/streaming_t2v.ckpt"),
    "CLIP-ViT-H-14-laion2B-s32B-b79K (APM image encoder, 2.5 GB)": Download(
        "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", "clip_vision",
        (("model.safetensors", "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"),)),
}

#: the diffusers folders are whole repositories
SNAPSHOTS: dict[str, tuple[str, str, str]] = {
    "damo-vilab/text-to-video-ms-1.7b (ModelScope, 7 GB)": ("damo-vilab/text-to-video-ms-1.7b", "diffusers",
                                                            "text-to-video-ms-1.7b"),
}


def download(item: Download, folder_root: Path, *, progress: Callable[[int, int], None] | None = None,
             fetch: Callable[..., str] | None = None) -> list[Path]:
    """Fetch ``item``'s files into ``folder_root`` (the ComfyUI model folder); files already there are kept.
    ``fetch`` is ``huggingface_hub.hf_hub_download`` unless given (called with ``repo_id``, ``filename`` and
    ``local_dir``). Files land under their final name only when complete. Returns the local paths."""
    if fetch is None:
        from huggingface_hub import hf_hub_download as fetch
    out: list[Path] = []
    for i, (remote, local) in enumerate(item.files):
        target = folder_root / local
        if not target.is_file():
            staging = folder_root / ".download"
            staging.mkdir(parents=True, exist_ok=True)
            try:
                fetched = Path(fetch(repo_id=item.repo_id, filename=remote, local_dir=str(staging)))
            except Exception as exc:  # network errors, gated repos, missing files
                raise RuntimeError(f"could not download {remote} from huggingface.co/{item.repo_id} "
                                   f"({type(exc).__name__}: {exc}); download it by hand into {target}") from exc
            target.parent.mkdir(parents=True, exist_ok=True)
            fetched.replace(target)
        out.append(target)
        if progress is not None:
            progress(i + 1, len(item.files))
    return out


def snapshot(repo_id: str, destination: Path, *, fetch: Callable[..., str] | None = None) -> Path:
    """A whole diffusers repository into ``destination`` (``huggingface_hub.snapshot_download``)."""
    if fetch is None:
        from huggingface_hub import snapshot_download as fetch
    try:
        fetch(repo_id=repo_id, local_dir=str(destination))
    except Exception as exc:
        raise RuntimeError(f"could not download huggingface.co/{repo_id} ({type(exc).__name__}: {exc}); "
                           f"download it by hand into {destination}") from exc
    return destination
