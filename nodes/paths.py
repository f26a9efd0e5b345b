"""Model folders of the pack, registered with ComfyUI's ``folder_paths`` (appending, so ``extra_model_paths.yaml``
entries keep working), and the combo lists the loader nodes offer."""
from __future__ import annotations

import os
from pathlib import Path

import folder_paths

WEIGHT_EXTENSIONS = {".ckpt", ".pt", ".pth", ".safetensors", ".sft", ".bin"}
PACK_FOLDERS = ("live2diff", "streamingt2v")
NONE = "none"


def register_folders() -> None:
    """Add ``models/live2diff`` and ``models/streamingt2v`` (with weight extensions) to ``folder_paths``."""
    for name in PACK_FOLDERS:
        folder_paths.add_model_folder_path(name, os.path.join(folder_paths.models_dir, name))
        folder_paths.folder_names_and_paths[name][1].update(WEIGHT_EXTENSIONS)


def files(folder: str) -> list[str]:
    """Weight files in a ComfyUI model folder (relative names, subfolders included)."""
    try:
        return sorted(folder_paths.get_filename_list(folder))
    except KeyError:
        return []


def model_folders(folder: str, marker: str = "config.json") -> list[str]:
    """Sub-folders (relative names) of a ComfyUI model folder that contain ``marker`` or ``model_index.json``."""
    found: set[str] = set()
    try:
        roots = folder_paths.get_folder_paths(folder)
    except KeyError:
        return []
    for root in roots:
        if not os.path.isdir(root):
            continue
        for here, dirs, names in os.walk(root, followlinks=True):
            if marker in names or "model_index.json" in names:
                found.add(os.path.relpath(here, root))
                dirs.clear()  # do not list the pipeline's own sub-folders
    found.discard(".")
    return sorted(found)


def resolve_file(folder: str, name: str) -> Path:
    """Full path of a file from a combo list; a clear error naming the folders searched."""
    path = folder_paths.get_full_path(folder, name)
    if path is None:
        raise FileNotFoundError(f"{name} not found in models/{folder} (searched: "
                                f"{', '.join(folder_paths.get_folder_paths(folder))})")
    return Path(path)


def resolve_folder(folder: str, name: str) -> Path:
    """Full path of a model folder from a combo list."""
    for root in folder_paths.get_folder_paths(folder):
        candidate = Path(root) / name
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"model folder {name} not found in models/{folder} (searched: "
                            f"{', '.join(folder_paths.get_folder_paths(folder))})")


def identity(path: Path) -> tuple:
    """A cache identity for a file or folder: path, size and modification time (of every file in a folder)."""
    path = path.resolve()
    if path.is_file():
        st = path.stat()
        return (str(path), st.st_size, st.st_mtime_ns)
    entries = []
    for p in sorted(path.rglob("*")):
        if p.is_file():
            st = p.stat()
            entries.append((str(p.relative_to(path)), st.st_size, st.st_mtime_ns))
    return (str(path), tuple(entries))
