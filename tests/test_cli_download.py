"""The main job's command line fetches the catalog's Live2Diff files into the ComfyUI model folders when they are
missing (a stand-in fetcher serves tiny files in the real formats), uses what is there otherwise, and says clearly
when it is offline; ``python -m live2diff_core download`` is the same catalog."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny import write_live2diff_files

from live2diff_core import cli, downloads

REPO = Path(__file__).resolve().parents[1]


class ServesFiles:
    """A stand-in for the Hugging Face fetcher: serves files from a local folder by their remote name."""

    def __init__(self, files: dict[str, Path], offline: bool = False):
        self.files, self.offline, self.calls = files, offline, []

    def list_files(self, repo_id):
        raise AssertionError("no model folder is part of the Live2Diff set")

    def fetch(self, repo_id, filename, dest, progress):
        self.calls.append(f"{repo_id}/{filename}")
        if self.offline:
            raise OSError("Failed to resolve 'huggingface.co' ([Errno -3] Temporary failure in name resolution)")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.files[filename], dest)
        if progress:
            progress(dest.name, dest.stat().st_size, dest.stat().st_size)

    def fetch_url(self, url, dest, progress):
        self.fetch("url", url.rsplit("/", 1)[-1], dest, progress)


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    return write_live2diff_files(tmp_path_factory.mktemp("hub"))


@pytest.fixture
def frames(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(9):
        Image.fromarray(rng.integers(0, 255, (40, 72, 3), dtype=np.uint8)).save(src / f"f{i:02d}.png")
    return src


def _run(args, models, fetcher, frames, out):
    return cli.main(args + ["--models-dir", str(models), "--input", str(frames), "--output", str(out), "--prompt",
                            "a fox", "--width", "64", "--height", "64", "--device", "cpu"], fetcher=fetcher)


def test_main_job_fetches_missing_files_then_uses_what_is_there(tiny_files, frames, tmp_path, capsys):
    models = tmp_path / "models"
    fetcher = ServesFiles({"live2diff.ckpt": tiny_files / "live2diff.ckpt",
                           "taesd_encoder.safetensors": tiny_files / "vae_approx/taesd_encoder.safetensors",
                           "taesd_decoder.safetensors": tiny_files / "vae_approx/taesd_decoder.safetensors"})
    own_base = ["--base", str(tiny_files / "sd15"), "--no-depth", "--lcm-lora", "none"]
    assert _run(own_base, models, fetcher, frames, tmp_path / "out") == 0
    assert sorted(fetcher.calls) == ["Leoxing/Live2Diff/live2diff.ckpt", "madebyollin/taesd/taesd_decoder.safetensors",
                                     "madebyollin/taesd/taesd_encoder.safetensors"]
    assert (models / "live2diff/live2diff.ckpt").read_bytes() == (tiny_files / "live2diff.ckpt").read_bytes()
    assert len(list((tmp_path / "out").glob("*.png"))) == 9
    err = capsys.readouterr().err
    assert "fetching 3 missing Live2Diff file(s)" in err and "live2diff.ckpt" in err and "MiB" in err
    # second run: everything is there, nothing is fetched, the same frames come out
    first = [np.asarray(Image.open(p)) for p in sorted((tmp_path / "out").glob("*.png"))]
    assert _run(own_base, models, fetcher, frames, tmp_path / "out2") == 0
    assert len(fetcher.calls) == 3
    second = [np.asarray(Image.open(p)) for p in sorted((tmp_path / "out2").glob("*.png"))]
    assert all((a == b).all() for a, b in zip(first, second))


def test_main_job_without_flags_uses_every_catalog_file(tiny_files, frames, tmp_path, monkeypatch):
    """All six catalog files are fetched to their folders and handed to the loader (the loader is stopped there:
    the real SD1.5 and DPT sizes are too big for a unit test; their formats are tested in their loaders' tests)."""
    seen = {}

    class Loaded(Exception):
        pass

    def from_files(base, motion, **kw):
        seen.update(base=base, motion=motion, **kw)
        raise Loaded

    monkeypatch.setattr("live2diff_core.pipeline.Live2DiffPipeline.from_files", from_files)
    models = tmp_path / "models"
    names = {e.remote or e.url.rsplit("/", 1)[-1]: tiny_files / "live2diff.ckpt"
             for e in downloads.entries_for("live2diff")}
    fetcher = ServesFiles(names)
    with pytest.raises(Loaded):
        _run([], models, fetcher, frames, tmp_path / "out")
    assert len(fetcher.calls) == 6
    assert seen["base"] == str(models / "checkpoints/v1-5-pruned-emaonly.safetensors")
    assert seen["motion"] == str(models / "live2diff/live2diff.ckpt")
    assert seen["taesd"] == str(models / "vae_approx")
    assert seen["depth"] == str(models / "live2diff/dpt_hybrid_384.pt")
    assert seen["lcm_lora"] == str(models / "loras/lcm-lora-sdv1-5.safetensors")
    for key in ("base", "motion", "depth", "lcm_lora"):
        assert Path(seen[key]).is_file()


def test_offline_says_so_and_leaves_nothing(frames, tmp_path):
    models = tmp_path / "models"
    with pytest.raises(SystemExit) as exc:
        _run(["--no-depth"], models, ServesFiles({}, offline=True), frames, tmp_path / "out")
    message = str(exc.value)
    assert "(offline?)" in message and "Nothing was written" in message
    assert "huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5" in message
    assert not [p for p in models.rglob("*") if p.is_file()]
    assert not list(models.glob(downloads.STAGING_PREFIX + "*"))


def test_no_download_names_every_missing_file(frames, tmp_path):
    with pytest.raises(SystemExit) as exc:
        _run(["--no-download"], tmp_path / "models", ServesFiles({}), frames, tmp_path / "out")
    message = str(exc.value)
    for name in ("v1-5-pruned-emaonly.safetensors", "live2diff.ckpt", "dpt_hybrid_384.pt", "taesd_encoder",
                 "taesd_decoder", "lcm-lora-sdv1-5.safetensors"):
        assert name in message
    assert "python -m live2diff_core download live2diff" in message


def test_download_subcommand(tiny_files, tmp_path, capsys):
    fetcher = ServesFiles({"taesd_encoder.safetensors": tiny_files / "vae_approx/taesd_encoder.safetensors"})
    assert cli.main(["download", "taesd_encoder", "--models-dir", str(tmp_path)], fetcher=fetcher) == 0
    assert (tmp_path / "vae_approx/taesd_encoder.safetensors").is_file()
    assert cli.main(["download", "--list", "--models-dir", str(tmp_path)]) == 0
    listing = capsys.readouterr().out
    assert "taesd_encoder" in listing and "present" in listing and "missing" in listing
    with pytest.raises(SystemExit):
        cli.main(["download", "nonsense", "--models-dir", str(tmp_path)])


def test_models_dir_is_found_when_installed_in_custom_nodes(tmp_path, monkeypatch):
    monkeypatch.delenv("COMFYUI_MODELS_DIR", raising=False)
    comfy = tmp_path / "ComfyUI"
    pack = comfy / "custom_nodes" / "stream-video-diffusion"
    pack.parent.mkdir(parents=True)
    (comfy / "folder_paths.py").write_text("")
    monkeypatch.setattr(cli, "PACK", pack)
    assert cli.default_models_dir() == comfy / "models"
    monkeypatch.setattr(cli, "PACK", tmp_path / "elsewhere")
    assert cli.default_models_dir() is None
    monkeypatch.setenv("COMFYUI_MODELS_DIR", str(tmp_path / "m"))
    assert cli.default_models_dir() == tmp_path / "m"


def test_python_dash_m_download_list_runs():
    out = subprocess.run([sys.executable, "-m", "live2diff_core", "download", "--table"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == downloads.catalog_table()
