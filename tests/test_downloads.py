"""The optional weight downloads (nodes/downloads.py, loaded as a file: it has no ComfyUI import)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("_downloads", Path(__file__).resolve().parents[1] / "nodes" /
                                              "downloads.py")
downloads = importlib.util.module_from_spec(spec)
sys.modules["_downloads"] = downloads  # dataclasses resolve annotations through sys.modules
spec.loader.exec_module(downloads)


def test_download_places_files_under_their_final_names_and_skips_existing(tmp_path):
    calls = []

    def fetch(repo_id, filename, local_dir):
        calls.append((repo_id, filename))
        path = Path(local_dir) / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"weights of " + filename.encode())
        return str(path)

    item = downloads.CATALOG["TAESD (tiny VAE, 10 MB)"]
    progress = []
    paths = downloads.download(item, tmp_path, progress=lambda d, t: progress.append((d, t)), fetch=fetch)
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == [
        "taesd/config.json", "taesd/diffusion_pytorch_model.safetensors"]
    assert paths[0].read_bytes() == b"weights of config.json"
    assert progress == [(1, 2), (2, 2)]
    downloads.download(item, tmp_path, fetch=fetch)  # already there: nothing fetched again
    assert len(calls) == 2


def test_download_errors_name_the_repo_and_the_target(tmp_path):
    def offline(**_):
        raise OSError("network unreachable")

    item = downloads.CATALOG["LCM-LoRA SD1.5 (135 MB)"]
    with pytest.raises(RuntimeError, match="latent-consistency/lcm-lora-sdv1-5.*by hand into .*lcm-lora-sdv1-5"):
        downloads.download(item, tmp_path, fetch=offline)
    assert not (tmp_path / "lcm-lora-sdv1-5.safetensors").exists()  # nothing half-written under the real name


def test_catalog_targets_are_the_loaders_folders():
    folders = {d.folder for d in downloads.CATALOG.values()}
    assert folders <= {"live2diff", "vae_approx", "loras", "streamingt2v", "clip_vision"}
