"""The explicit download node: registered, and a clear error (naming the repo and where to put the file by hand)
when the download cannot happen (the test server runs offline)."""
from __future__ import annotations

from client import Graph


def test_download_node_offline_error_is_clear(comfy):
    info = comfy.object_info("ST2V_DownloadWeights")
    assert info and any("LCM-LoRA" in o for o in info["input"]["required"]["weights"][1]["options"])
    g = Graph()
    g.node("ST2V_DownloadWeights", weights="LCM-LoRA SD1.5 (135 MB)")
    entry = comfy.run(g.prompt(), expect="error", timeout=120)
    message = entry.error["exception_message"]
    assert "latent-consistency/lcm-lora-sdv1-5" in message and "by hand into" in message
    assert "models/loras/lcm-lora-sdv1-5.safetensors" in message.replace("\\", "/")
