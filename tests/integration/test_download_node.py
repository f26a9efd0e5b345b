"""The download node against the real server, which runs offline: the catalog's choices are offered (the two sets
first), a download that cannot reach its source fails with a message that says so and names the source and the
target, and nothing is left in models/ (no staging folder, no partial file)."""
from __future__ import annotations

from pathlib import Path

from client import Graph


def test_download_node_offers_the_catalog(comfy):
    options = comfy.object_info("ST2V_DownloadWeights")["input"]["required"]["weights"][1]["options"]
    assert options[:2] == ["all Live2Diff files", "all StreamingT2V files"]
    assert "lcm-lora-sdv1-5.safetensors (~135 MB, models/loras)" in options


def test_download_node_offline_error_is_clear_and_leaves_nothing(comfy):
    models = Path(comfy.server.run_dir) / "models"
    before = sorted(p.relative_to(models).as_posix() for p in models.rglob("*"))
    g = Graph()
    g.node("ST2V_DownloadWeights", weights="all Live2Diff files")
    entry = comfy.run(g.prompt(), expect="error", timeout=120)
    message = entry.error["exception_message"].replace("\\", "/")
    assert "could not reach huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5" in message
    assert "(offline?)" in message and "Nothing was written" in message
    assert "models/checkpoints/v1-5-pruned-emaonly.safetensors" in message
    after = sorted(p.relative_to(models).as_posix() for p in models.rglob("*"))
    assert after == before
