"""Model folders of the pack, registered with ComfyUI's ``folder_paths`` (appending, so ``extra_model_paths.yaml``
entries keep working), and the combo lists the loader nodes offer."""
from __future__ import annotations

import os
from pathlib import Path, PureWindowsPath

import folder_paths

WEIGHT_EXTENSIONS = {".ckpt", ".pt", ".pth", ".safetensors", ".sft", ".bin"}
MODEL_FILE_EXTENSIONS = WEIGHT_EXTENSIONS | {".json"}  # what identifies a model folder: configs, indexes, weights
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


def checked_name(folder: str, name: str) -> str:
    """``name`` unchanged if it can only name something inside ``models/<folder>``: relative, without drive, ``..``,
    ``.`` or empty parts (``/`` and ``\\`` both count as separators). Judged on the text alone: links inside a
    model folder stay legitimate wherever they point."""
    parts = name.replace("\\", "/").split("/")
    if not name or PureWindowsPath(name).drive or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"{name!r} is not a name inside models/{folder}: pick an entry from the list (a relative "
                         "name without '..', '//' or a leading '/')")
    return name


def is_plain_name(name: str) -> bool:
    """Whether :func:`checked_name` accepts ``name``."""
    try:
        checked_name("", name)
    except ValueError:
        return False
    return True


def resolve_file(folder: str, name: str) -> Path:
    """Full path of a file from a combo list; a clear error naming the folders searched."""
    path = folder_paths.get_full_path(folder, checked_name(folder, name))
    if path is None:
        raise FileNotFoundError(f"{name} not found in models/{folder} (searched: "
                                f"{', '.join(folder_paths.get_folder_paths(folder))})")
    return Path(path)


def resolve_folder(folder: str, name: str) -> Path:
    """Full path of a model folder from a combo list."""
    checked_name(folder, name)
    for root in folder_paths.get_folder_paths(folder):
        candidate = Path(root) / name
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"model folder {name} not found in models/{folder} (searched: "
                            f"{', '.join(folder_paths.get_folder_paths(folder))})")


def _model_files(folder: Path) -> list[Path]:
    """Configs and weights of a model folder and of its component sub-folders (diffusers, transformers layouts):
    two directory listings deep, never a walk of the tree below."""
    levels = [folder] + sorted(p for p in folder.iterdir() if p.is_dir())
    return [p for level in levels for p in sorted(level.iterdir())
            if p.suffix in MODEL_FILE_EXTENSIONS and p.is_file()]


def identity(path: Path) -> tuple:
    """A cache identity for a file or a model folder: path, size and modification time (of the folder's model
    files, see :func:`_model_files`)."""
    path = path.resolve()
    if path.is_file():
        st = path.stat()
        return (str(path), st.st_size, st.st_mtime_ns)
    entries = []
    for p in _model_files(path):
        st = p.stat()
        entries.append((str(p.relative_to(path)), st.st_size, st.st_mtime_ns))
    return (str(path), tuple(entries))
