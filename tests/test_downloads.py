"""The weight catalog and its download routine (``live2diff_core.downloads``), run end to end with a stand-in
fetcher: files land under the names the shipped workflows use, a failure leaves nothing behind, and every default
file name in a shipped workflow is written by a catalog entry."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from live2diff_core import downloads

REPO = Path(__file__).resolve().parents[1]

_spec = importlib.util.spec_from_file_location("make_ui", REPO / "workflows" / "make_ui.py")
make_ui = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_ui)


def workflow_files(api: dict) -> list[tuple[str, str, str]]:
    """``(node input, folder, name)`` for every model file or folder a workflow (API format) names."""
    return [(inp, folder, name) for _, inp, folder, name in make_ui.model_files(api)]


def shipped_workflows() -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted((REPO / "workflows" / "api").glob("*.json"))}


class StandIn:
    """A fetcher that writes small files in place of the real ones and records what it was asked for."""

    def __init__(self, fail_on: str | None = None, error: Exception | None = None):
        self.calls: list[str] = []
        self.fail_on, self.error = fail_on, error or OSError("[Errno 101] Network is unreachable")

    def _maybe_fail(self, what: str) -> None:
        self.calls.append(what)
        if self.fail_on and self.fail_on in what:
            raise self.error

    def list_files(self, repo_id: str) -> list[str]:
        self._maybe_fail(f"list {repo_id}")
        return ["model_index.json", "README.md", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                "unet/diffusion_pytorch_model.bin", "unet/diffusion_pytorch_model.fp16.safetensors",
                "vae/config.json", "vae/diffusion_pytorch_model.bin", "text_encoder/config.json",
                "text_encoder/model.safetensors", "tokenizer/vocab.json", "scheduler/scheduler_config.json",
                "zs2_XL/text2video_pytorch_model.pth", "config.json", "model.safetensors", "pytorch_model.bin",
                "preprocessor_config.json", "tokenizer.json"]

    def fetch(self, repo_id, filename, dest, progress):
        self._maybe_fail(f"{repo_id}/{filename}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(f"{repo_id}/{filename}".encode())

    def fetch_url(self, url, dest, progress):
        self._maybe_fail(url)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(b"x" * 10)
        if progress:
            progress(dest.name, 10, 10)


def convert_stand_in(ckpt: Path, out: Path) -> None:
    assert ckpt.name == "streaming_t2v.ckpt"
    for part in ("base", "cam", "apm", "image_encoder"):
        (out / f"streaming_t2v.{part}.safetensors").write_bytes(part.encode())


def _folders(models: Path):
    return lambda folder: models / folder


def _tree(models: Path) -> list[str]:
    return sorted(p.relative_to(models).as_posix() for p in models.rglob("*") if p.is_file())


def test_every_default_file_of_every_shipped_workflow_is_written_by_the_catalog(tmp_path):
    models = tmp_path / "models"
    downloads.download(downloads.entries_for("all"), _folders(models), models, fetcher=StandIn(),
                       converters={"streaming_t2v": convert_stand_in}, log=lambda _: None)
    missing = []
    for wf, api in shipped_workflows().items():
        for inp, folder, name in workflow_files(api):
            assert downloads.entry_for_file(folder, name) is not None, f"{wf}: {inp}={name} has no catalog entry"
            if not (models / folder / name).exists():
                missing.append(f"{wf}: {inp} -> models/{folder}/{name}")
    assert not missing, missing
    assert not list(models.glob(downloads.STAGING_PREFIX + "*"))
    assert not (models / "streamingt2v" / "streaming_t2v.ckpt").exists()  # the 25 GB original is not kept


def test_the_workflows_name_every_live2diff_file_of_the_set():
    named = {(f, n) for api in shipped_workflows().values() for _, f, n in workflow_files(api)}
    for key in downloads.SETS["live2diff"] + downloads.SETS["streamingt2v"]:
        e = downloads.BY_KEY[key]
        assert (e.folder, e.name) in named, f"{e.name} is downloaded but no shipped workflow uses it"


def test_files_land_under_their_final_names_and_existing_ones_are_kept(tmp_path):
    models = tmp_path / "models"
    fetcher = StandIn()
    paths = downloads.download(downloads.entries_for("live2diff"), _folders(models), models, fetcher=fetcher,
                               log=lambda _: None)
    assert [p.relative_to(models).as_posix() for p in paths] == [
        "checkpoints/v1-5-pruned-emaonly.safetensors", "live2diff/live2diff.ckpt", "live2diff/dpt_hybrid_384.pt",
        "vae_approx/taesd_encoder.safetensors", "vae_approx/taesd_decoder.safetensors",
        "loras/lcm-lora-sdv1-5.safetensors"]
    assert (models / "loras/lcm-lora-sdv1-5.safetensors").read_bytes() == \
        b"latent-consistency/lcm-lora-sdv1-5/pytorch_lora_weights.safetensors"
    assert _tree(models) == sorted(p.relative_to(models).as_posix() for p in paths)  # nothing else written
    calls = len(fetcher.calls)
    downloads.download(downloads.entries_for("live2diff"), _folders(models), models, fetcher=fetcher,
                       log=lambda _: None)
    assert len(fetcher.calls) == calls  # all there: nothing fetched again


@pytest.mark.parametrize("fail_on,failed", [("madebyollin/taesd/taesd_decoder", "taesd_decoder"),
                                            ("dpt_hybrid_384", "midas"), ("list damo-vilab", "modelscope"),
                                            ("damo-vilab/text-to-video-ms-1.7b/vae/", "modelscope")])
def test_a_failed_download_leaves_nothing_behind(tmp_path, fail_on, failed):
    models = tmp_path / "models"
    (models / "loras").mkdir(parents=True)
    (models / "loras" / "mine.safetensors").write_bytes(b"mine")
    before = _tree(models)
    entries = [downloads.BY_KEY[k] for k in ("midas", "taesd_decoder", "modelscope")]
    with pytest.raises(downloads.OfflineError, match=r"could not reach .*\(offline\?\).*Nothing was written"):
        downloads.download(entries, _folders(models), models, fetcher=StandIn(fail_on=fail_on), log=lambda _: None)
    i = [e.key for e in entries].index(failed)
    done = [f"{e.folder}/{e.name}" for e in entries[:i]]
    new = set(_tree(models)) - set(before)
    assert all(any(f == d or f.startswith(d + "/") for d in done) for f in new), new  # only completed entries
    assert not (models / entries[i].folder / entries[i].name).exists()
    assert not list(models.glob(downloads.STAGING_PREFIX + "*"))
    assert not [p for p in models.rglob("*") if p.name.startswith((".hub", ".download"))]


def test_an_error_that_is_not_the_network_names_the_source_and_the_target(tmp_path):
    models = tmp_path / "models"
    fetcher = StandIn(fail_on="lcm-lora", error=PermissionError("401 gated repository"))
    with pytest.raises(RuntimeError, match=r"could not download lcm-lora-sdv1-5.safetensors from huggingface.co/"
                                           r"latent-consistency/lcm-lora-sdv1-5.*by hand into .*loras") as err:
        downloads.download([downloads.BY_KEY["lcm_lora"]], _folders(models), models, fetcher=fetcher,
                           log=lambda _: None)
    assert not isinstance(err.value, downloads.OfflineError)
    assert _tree(models) == []


def test_a_conversion_that_fails_leaves_nothing_behind(tmp_path):
    models = tmp_path / "models"

    def broken(ckpt, out):
        (out / "streaming_t2v.base.safetensors").write_bytes(b"half")
        raise ValueError("holds no StreamingT2V tensors")

    with pytest.raises(ValueError, match="no StreamingT2V tensors"):
        downloads.download([downloads.BY_KEY["streaming_t2v"]], _folders(models), models, fetcher=StandIn(),
                           converters={"streaming_t2v": broken}, log=lambda _: None)
    assert _tree(models) == []


def test_a_killed_download_is_cleaned_up_by_the_next_one(tmp_path):
    models = tmp_path / "models"
    stale = models / f"{downloads.STAGING_PREFIX}999999999"
    (stale / "x").mkdir(parents=True)
    downloads.download([downloads.BY_KEY["taesd_encoder"]], _folders(models), models, fetcher=StandIn(),
                       log=lambda _: None)
    assert not stale.exists()


def test_model_folders_keep_safetensors_and_the_listed_components_only():
    files = StandIn().list_files("x")
    assert downloads.select_files(files, downloads.BY_KEY["zeroscope_xl"].include) == [
        "model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json",
        "text_encoder/model.safetensors", "tokenizer/vocab.json", "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors", "vae/config.json", "vae/diffusion_pytorch_model.bin"]
    assert downloads.select_files(files, downloads.BY_KEY["clip_l14"].include) == [
        "config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json"]


def test_choices_offer_the_two_sets_first_and_every_file():
    choices = downloads.choices()
    assert choices[:2] == ["all Live2Diff files", "all StreamingT2V files"]
    for c in choices:
        assert downloads.entries_for(c)
    assert [e.key for e in downloads.entries_for("all Live2Diff files")] == list(downloads.SETS["live2diff"])
    with pytest.raises(KeyError, match="unknown download"):
        downloads.entries_for("../../etc")


def test_how_to_get_points_to_the_node_and_the_command_line():
    text = downloads.how_to_get("live2diff", "dpt_hybrid_384.pt")
    assert "'all Live2Diff files'" in text and "python -m live2diff_core download live2diff" in text
    assert "github.com/isl-org/MiDaS" in text
    assert "streamingt2v" in downloads.how_to_get("streamingt2v", "streaming_t2v.image_encoder.safetensors")
    assert downloads.how_to_get("checkpoints", "my_dreambooth.safetensors") == "put it into models/checkpoints"


def test_the_readme_table_is_the_catalog():
    readme = (REPO / "README.md").read_text()
    assert downloads.catalog_table() in readme, "regenerate the README table: python -m live2diff_core download --table"
