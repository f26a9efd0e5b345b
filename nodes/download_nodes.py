"""The download node: the catalog of ``live2diff_core.downloads`` into ComfyUI's model folders (nothing is ever
downloaded at import or by other nodes)."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import folder_paths
from comfy_api.latest import io

import comfy.model_management as mm
import comfy.utils

from ..live2diff_core import downloads
from .display import show_text
from .validation import ValidatedNode

log = logging.getLogger(__name__)


def folder_root(folder: str) -> Path:
    """The first (default) path of a ComfyUI model folder."""
    return Path(folder_paths.get_folder_paths(folder)[0])


def convert_streaming_t2v(ckpt: Path, out_dir: Path) -> None:
    """The official StreamingT2V checkpoint into the parts the loader reads (``streaming_t2v.*.safetensors``)."""
    from ..streaming_t2v_core.weights_io import convert_checkpoint

    convert_checkpoint(ckpt, out_dir, "streaming_t2v")


CONVERTERS = {"streaming_t2v": convert_streaming_t2v}


class DownloadWeights(ValidatedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ST2V_DownloadWeights", display_name=downloads.DOWNLOAD_NODE,
            category="StreamVideo", is_output_node=True,
            description="Download the official weights from Hugging Face (and the MiDaS release) into the ComfyUI "
                        "model folders, under the names the shipped workflows use. Runs only when you queue it; "
                        "files already present are kept; a failed download leaves nothing behind. Same catalog on "
                        "the command line: python -m live2diff_core download live2diff",
            inputs=[io.Combo.Input(
                "weights", options=downloads.choices(), default=downloads.choices()[0],
                tooltip="What to fetch. 'all Live2Diff files' (about 6.6 GB: SD1.5, live2diff.ckpt, "
                        "dpt_hybrid_384.pt, TAESD, LCM-LoRA) runs the Live2Diff workflows; 'all StreamingT2V files' "
                        "(about 36 GB to fetch) runs the long-video and metrics workflows. Or one file.")],
            outputs=[io.String.Output(display_name="paths")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def fingerprint_inputs(cls, weights) -> str:
        return weights

    @classmethod
    def execute(cls, weights) -> io.NodeOutput:
        entries = downloads.entries_for(weights)
        pbar = comfy.utils.ProgressBar(len(entries))
        models_dir = Path(folder_paths.models_dir)
        paths = []

        node = cls.hidden.unique_id
        shown = {"at": 0.0}

        def progress(name: str, done: int, total: int) -> None:
            mm.throw_exception_if_processing_interrupted()
            now = time.monotonic()
            if now - shown["at"] > 0.5:  # at most twice a second
                shown["at"] = now
                size = f"{done / 2 ** 20:.0f}/{total / 2 ** 20:.0f} MiB" if total else f"{done / 2 ** 20:.0f} MiB"
                show_text(node, f"downloading {name}: {size}")

        for i, entry in enumerate(entries):
            mm.throw_exception_if_processing_interrupted()
            show_text(node, f"[{i + 1}/{len(entries)}] {entry.folder}/{entry.name} ({entry.size}) from {entry.source}")
            paths += downloads.download([entry], folder_root, models_dir, converters=CONVERTERS, progress=progress,
                                        log=log.info)
            pbar.update_absolute(i + 1, len(entries))
        text = "\n".join(str(p) for p in paths) + "\nPress R in ComfyUI to refresh the model lists."
        return io.NodeOutput(text, ui=show_text(node, text))


NODES = [DownloadWeights]
