"""Explicit download nodes for the official weights (nothing is ever downloaded at import or by other nodes)."""
from __future__ import annotations

import logging
from pathlib import Path

import folder_paths
from comfy_api.latest import io, ui

import comfy.utils

from . import downloads
from .validation import ValidatedNode

log = logging.getLogger(__name__)


def _folder_root(folder: str) -> Path:
    """The first (default) path of a ComfyUI model folder."""
    return Path(folder_paths.get_folder_paths(folder)[0])


class DownloadWeights(ValidatedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ST2V_DownloadWeights", display_name="Download Official Weights (Live2Diff / StreamingT2V)",
            category="StreamVideo", is_output_node=True,
            description="Download one of the official weight files from Hugging Face into the ComfyUI model folder "
                        "the loaders read. Runs only when you queue it; files already present are kept.",
            inputs=[io.Combo.Input("weights", options=sorted(downloads.CATALOG) + sorted(downloads.SNAPSHOTS))],
            outputs=[io.String.Output(display_name="paths")],
        )

    @classmethod
    def fingerprint_inputs(cls, weights) -> str:
        return weights

    @classmethod
    def execute(cls, weights) -> io.NodeOutput:
        if weights in downloads.SNAPSHOTS:
            repo_id, folder, name = downloads.SNAPSHOTS[weights]
            pbar = comfy.utils.ProgressBar(1)
            paths = [downloads.snapshot(repo_id, _folder_root(folder) / name)]
            pbar.update(1)
            note = ""
        else:
            item = downloads.CATALOG[weights]
            pbar = comfy.utils.ProgressBar(len(item.files))
            paths = downloads.download(item, _folder_root(item.folder),
                                       progress=lambda done, total: pbar.update_absolute(done, total))
            note = item.note
        text = "\n".join(str(p) for p in paths) + (f"\n{note}" if note else "")
        log.info("stream-video-diffusion: downloaded %s", text)
        return io.NodeOutput(text, ui=ui.PreviewText(text))


NODES = [DownloadWeights]
