"""Checkpoint reading and writing for StreamingT2V (plain torch + safetensors, no ComfyUI).

Public API
----------
``read_checkpoint(path, prefixes) -> (tensors, CheckpointReport)``
    Reads the official ``streaming_t2v.ckpt`` (a PyTorch-Lightning pickle in torch's zip format) memory-mapped,
    through a *restricted* unpickler: only torch's tensor-rebuild functions, storage types, dtypes and plain
    containers are resolved; every other class (Lightning, omegaconf, the official repo, numpy, ...) becomes an
    inert placeholder. No module outside that allow-list is ever imported and no foreign code runs.

    ``tensors`` holds only the ``state_dict`` entries whose names start with one of ``prefixes``, **with their full
    names (the prefix is NOT stripped)** -- use :func:`strip_prefix` to strip it. The tensors are views into the
    memory-mapped file (no copy in RAM; pages are read on first touch). An empty-string prefix selects everything.
    The report lists the other top-level state_dict prefixes seen (``image_encoder.``, ``text_encoder.``, ``vae.``...)
    with tensor counts, and the other top-level checkpoint entries (``optimizer_states``, ``callbacks``...) as
    *ignored*; neither is an error.

    Also accepts a ``.safetensors`` file (read via :func:`read_safetensors`) and a plain pickled ``state_dict``
    (a dict of tensors at the top level, e.g. ``pytorch_model.bin``).

``read_safetensors(path, prefixes=None) -> dict[str, Tensor]``
    Zero-copy (mmapped) read of a safetensors file, optionally only the names under ``prefixes`` (full names kept).

``read_safetensors_metadata(path) -> dict[str, str]``
``save_safetensors(tensors, path, metadata=None)``
    Streaming safetensors writer: writes the header, then each tensor's bytes one at a time (peak extra RAM about
    one tensor; never serialises the whole file in memory). Output is a standard safetensors file.

``convert_checkpoint(ckpt_path, out_dir=None, name=None) -> dict[str, Path]``
    Splits the official checkpoint into the files users should keep (see :data:`PARTS`):
    ``<name>.base.safetensors`` (``base_model.`` stripped), ``<name>.cam.safetensors`` (``unet.`` stripped),
    ``<name>.apm.safetensors`` (``resampler.`` stripped) and ``<name>.image_encoder.safetensors``
    (``image_encoder.model.visual.*`` re-rooted to open_clip ``visual.*`` names). One file at a time, streamed from
    the mmapped checkpoint. Each file carries safetensors metadata (``format``, ``streaming_t2v_part``,
    ``streaming_t2v_format_version``, ``source_file``, ``source_prefix``, ``converter``).

Errors: a missing file raises ``FileNotFoundError`` naming the file and its folder; a truncated, corrupt or
foreign file raises ``ValueError`` naming the file.
"""
from __future__ import annotations

import collections
import copyreg
import json
import os
import pickle
import struct
import types
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

__all__ = [
    "CheckpointReport",
    "ConversionReport",
    "PARTS",
    "UnknownObject",
    "convert_checkpoint",
    "read_checkpoint",
    "read_safetensors",
    "read_safetensors_metadata",
    "save_safetensors",
    "strip_prefix",
    "tensor_backing_file",
]

FORMAT_VERSION = "1"

#: part name -> (prefix in the official checkpoint, prefix written in the converted file)
PARTS: dict[str, tuple[str, str]] = {
    "base": ("base_model.", ""),
    "cam": ("unet.", ""),
    "apm": ("resampler.", ""),
    "image_encoder": ("image_encoder.model.visual.", "visual."),
}


# ----------------------------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------------------------
def _check_exists(path: Path, what: str) -> None:
    if not path.exists():
        folder = path.parent
        if folder.is_dir():
            try:
                near = sorted(p.name for p in folder.iterdir() if p.suffix in (".ckpt", ".safetensors", ".bin", ".pt", ".pth"))
            except OSError:
                near = []
            hint = f"; weight files there: {', '.join(near[:8])}" if near else "; no weight files there"
            raise FileNotFoundError(f"{what} not found: '{path.name}' in folder '{folder}'{hint}")
        raise FileNotFoundError(f"{what} not found: '{path.name}' (folder '{folder}' does not exist either)")
    if path.is_dir():
        raise ValueError(f"{what} '{path}' is a directory, expected a file")
    if path.stat().st_size == 0:
        raise ValueError(f"{what} '{path}' is empty (0 bytes)")


# ----------------------------------------------------------------------------------------------------------------
# restricted unpickler
# ----------------------------------------------------------------------------------------------------------------
class UnknownObject:
    """Inert stand-in for any pickled class/function the restricted unpickler does not know.

    It records what the pickle asked for (constructor args, state, items) and does nothing else: no import, no
    foreign code. ``_st2v_qualname`` says which global it replaces.
    """

    _st2v_qualname = "?"

    def __new__(cls, *args: Any, **kwargs: Any):
        obj = object.__new__(cls)
        d = obj.__dict__
        d["_st2v_args"] = args
        d["_st2v_kwargs"] = kwargs
        d["_st2v_state"] = None
        d["_st2v_items"] = []
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # never runs anything
        pass

    def __setstate__(self, state: Any) -> None:
        self.__dict__["_st2v_state"] = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.__dict__["_st2v_items"].append((key, value))

    def append(self, value: Any) -> None:
        self.__dict__["_st2v_items"].append(value)

    def extend(self, values: Iterable[Any]) -> None:
        self.__dict__["_st2v_items"].extend(values)

    def __repr__(self) -> str:
        return f"<UnknownObject {self._st2v_qualname}>"


def _safe_codecs_encode(obj: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    # protocol-2 pickles store ``bytes`` as ``_codecs.encode(str, 'latin1')``
    if encoding.lower().replace("_", "-") not in ("latin1", "latin-1", "iso-8859-1", "utf-8", "utf8", "ascii"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return str(obj).encode(encoding, errors)


def _build_allowed() -> dict[tuple[str, str], Any]:
    import torch._tensor
    import torch._utils
    import torch.nn.parameter
    import torch.serialization

    allowed: dict[tuple[str, str], Any] = {}
    for name in (
        "_rebuild_tensor",
        "_rebuild_tensor_v2",
        "_rebuild_tensor_v3",
        "_rebuild_parameter",
        "_rebuild_parameter_with_state",
        "_rebuild_meta_tensor_no_storage",
    ):
        if hasattr(torch._utils, name):
            allowed[("torch._utils", name)] = getattr(torch._utils, name)
    for name in ("_rebuild_from_type_v2", "_rebuild_from_type"):
        if hasattr(torch._tensor, name):
            allowed[("torch._tensor", name)] = getattr(torch._tensor, name)
            allowed[("torch.tensor", name)] = getattr(torch._tensor, name)
    allowed[("torch.nn.parameter", "Parameter")] = torch.nn.parameter.Parameter
    allowed[("torch", "Tensor")] = torch.Tensor
    allowed[("torch._tensor", "Tensor")] = torch.Tensor
    allowed[("torch", "Size")] = torch.Size
    allowed[("torch", "device")] = torch.device
    allowed[("torch", "UntypedStorage")] = torch.UntypedStorage
    allowed[("torch.storage", "UntypedStorage")] = torch.UntypedStorage
    if hasattr(torch.serialization, "_get_layout"):
        allowed[("torch.serialization", "_get_layout")] = torch.serialization._get_layout
    for attr in dir(torch):
        val = getattr(torch, attr, None)
        if isinstance(val, (torch.dtype, torch.layout, torch.memory_format)):
            allowed[("torch", attr)] = val
    for cls in (dict, list, tuple, set, frozenset, int, float, complex, bool, str, bytes, bytearray, slice, range, object):
        allowed[("builtins", cls.__name__)] = cls
        allowed[("__builtin__", cls.__name__)] = cls
    for cls in (collections.OrderedDict, collections.defaultdict, collections.deque, collections.Counter):
        allowed[("collections", cls.__name__)] = cls
    allowed[("_codecs", "encode")] = _safe_codecs_encode
    return allowed


_ALLOWED: dict[tuple[str, str], Any] | None = None
_ALLOWED_CLASSES: set[type] = set()


def _allowed() -> dict[tuple[str, str], Any]:
    global _ALLOWED
    if _ALLOWED is None:
        _ALLOWED = _build_allowed()
        _ALLOWED_CLASSES.update(v for v in _ALLOWED.values() if isinstance(v, type))
    return _ALLOWED


def _make_restricted_pickle_module(unknown: set[str]) -> types.ModuleType:
    """A pickle-module stand-in for ``torch.load(pickle_module=...)``; unknown globals are recorded in ``unknown``."""
    allowed = _allowed()
    placeholders: dict[str, type] = {}

    def placeholder(module: str, name: str) -> type:
        qual = f"{module}.{name}"
        unknown.add(qual)
        cls = placeholders.get(qual)
        if cls is None:
            safe = "".join(c if c.isalnum() or c == "_" else "_" for c in str(name)) or "Unknown"
            cls = type(safe, (UnknownObject,), {"_st2v_qualname": qual, "__module__": __name__ + ".unknown"})
            placeholders[qual] = cls
        return cls

    def safe_reconstructor(cls: Any, base: Any, state: Any) -> Any:
        if isinstance(cls, type) and issubclass(cls, UnknownObject):
            return cls(state)
        if cls in _ALLOWED_CLASSES and (base is object or base in _ALLOWED_CLASSES):
            return copyreg._reconstructor(cls, base, state)
        raise pickle.UnpicklingError(f"refusing copyreg._reconstructor({cls!r}, {base!r})")

    class RestrictedUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:  # noqa: D401 - pickle API
            if (module, name) == ("copyreg", "_reconstructor") or (module, name) == ("copy_reg", "_reconstructor"):
                return safe_reconstructor
            obj = allowed.get((module, name))
            if obj is not None:
                return obj
            return placeholder(module, name)

    def load(file, **kwargs):
        return RestrictedUnpickler(file, **kwargs).load()

    def loads(data: bytes, **kwargs):
        import io

        return RestrictedUnpickler(io.BytesIO(data), **kwargs).load()

    mod = types.ModuleType("streaming_t2v_core._restricted_pickle")
    mod.Unpickler = RestrictedUnpickler
    mod.load = load
    mod.loads = loads
    mod.UnpicklingError = pickle.UnpicklingError
    mod.HIGHEST_PROTOCOL = pickle.HIGHEST_PROTOCOL
    return mod


# ----------------------------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class CheckpointReport:
    """What :func:`read_checkpoint` found.

    ``selected``: requested prefix -> number of tensors returned. ``other_prefixes``: first name component + "." ->
    number of state_dict tensors NOT returned (e.g. ``{"image_encoder.": 392, "text_encoder.": 197, "vae.": 248}``).
    ``ignored``: top-level checkpoint entries other than ``state_dict`` (optimizer state, callbacks, hyper
    parameters...), ignored by design. ``unknown_classes``: pickled globals replaced by inert placeholders.
    ``mmap``: whether the tensors are views into the memory-mapped file.
    """

    path: Path
    format: str
    mmap: bool
    selected: dict[str, int] = field(default_factory=dict)
    other_prefixes: dict[str, int] = field(default_factory=dict)
    non_tensor_entries: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    unknown_classes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"{self.path.name}: {self.format}{' (memory-mapped)' if self.mmap else ''}"]
        for p, n in self.selected.items():
            lines.append(f"  read     {p or '<all>'}: {n} tensors")
        for p, n in sorted(self.other_prefixes.items()):
            lines.append(f"  skipped  {p}: {n} tensors (not needed)")
        if self.non_tensor_entries:
            lines.append(f"  skipped  {len(self.non_tensor_entries)} non-tensor state_dict entries")
        for k in self.ignored:
            lines.append(f"  ignored  top-level entry '{k}'")
        if self.unknown_classes:
            lines.append(f"  inert placeholders for {len(self.unknown_classes)} pickled classes: "
                         + ", ".join(self.unknown_classes[:6]) + (" ..." if len(self.unknown_classes) > 6 else ""))
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# readers
# ----------------------------------------------------------------------------------------------------------------
def _is_safetensors(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 2 <= n <= path.stat().st_size


def _is_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _select(name: str, prefixes: Sequence[str]) -> str | None:
    for p in prefixes:
        if name.startswith(p):
            return p
    return None


def read_safetensors(path: str | os.PathLike, prefixes: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """Read a safetensors file (memory-mapped, CPU). With ``prefixes``, only names starting with one of them are
    returned; names are kept in full. Missing file -> FileNotFoundError; truncated/corrupt -> ValueError."""
    from safetensors import safe_open

    path = Path(path)
    _check_exists(path, "safetensors file")
    if isinstance(prefixes, str):
        prefixes = [prefixes]
    out: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for k in f.keys():
                if prefixes is None or _select(k, prefixes) is not None:
                    out[k] = f.get_tensor(k)
    except Exception as e:  # safetensors' SafetensorError is not a stable import
        raise ValueError(f"could not read safetensors file '{path}' (truncated or not a safetensors file?): {e}") from e
    return out


def read_safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``__metadata__`` dict of a safetensors file ({} when absent)."""
    from safetensors import safe_open

    path = Path(path)
    _check_exists(path, "safetensors file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return dict(f.metadata() or {})
    except Exception as e:
        raise ValueError(f"could not read safetensors file '{path}': {e}") from e


def _torch_load_restricted(path: Path, unknown: set[str]) -> tuple[Any, str, bool]:
    module = _make_restricted_pickle_module(unknown)
    if _is_zip(path):
        try:
            obj = torch.load(str(path), map_location="cpu", pickle_module=module, weights_only=False, mmap=True)
        except Exception as e:
            raise ValueError(
                f"could not read checkpoint '{path}' (truncated or corrupt torch zip file?): {type(e).__name__}: {e}"
            ) from e
        return obj, "torch-zip", True
    # legacy (pre-1.6) torch.save format or a raw pickle: cannot be memory-mapped
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(str(path), map_location="cpu", pickle_module=module, weights_only=False, mmap=False)
    except Exception as e:
        raise ValueError(
            f"could not read checkpoint '{path}' (not a torch checkpoint, or truncated/corrupt): {type(e).__name__}: {e}"
        ) from e
    warnings.warn(
        f"'{path.name}' uses the legacy (non-zip) torch format and cannot be memory-mapped; it was read into RAM. "
        "Convert it once with `python -m streaming_t2v_core.convert`.",
        stacklevel=3,
    )
    return obj, "torch-legacy", False


def _find_state_dict(obj: Any, path: Path) -> tuple[Mapping[str, Any], list[str]]:
    if isinstance(obj, Mapping):
        sd = obj.get("state_dict")
        if isinstance(sd, Mapping):
            return sd, [str(k) for k in obj.keys() if k != "state_dict"]
        if obj and all(isinstance(k, str) for k in obj.keys()) and any(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj, []  # a bare state_dict
    raise ValueError(
        f"'{path}' is a torch pickle but holds no 'state_dict' (top level: "
        f"{type(obj).__name__}{' with keys ' + str(list(obj.keys())[:10]) if isinstance(obj, Mapping) else ''})"
    )


def read_checkpoint(path: str | os.PathLike, prefixes: Sequence[str]) -> tuple[dict[str, torch.Tensor], CheckpointReport]:
    """Read the tensors under ``prefixes`` from a Lightning ``.ckpt`` (memory-mapped, restricted unpickler), a
    bare pickled state_dict, or a ``.safetensors`` file. Returned names keep their prefix. See the module doc."""
    path = Path(path)
    _check_exists(path, "checkpoint")
    if isinstance(prefixes, str):
        prefixes = [prefixes]
    prefixes = list(prefixes)

    unknown: set[str] = set()
    ignored: list[str] = []
    if _is_safetensors(path):
        state_dict: Mapping[str, Any] = read_safetensors(path)
        fmt, mapped = "safetensors", True
    else:
        obj, fmt, mapped = _torch_load_restricted(path, unknown)
        state_dict, ignored = _find_state_dict(obj, path)
        del obj

    tensors: dict[str, torch.Tensor] = {}
    selected = {p: 0 for p in prefixes}
    others: dict[str, int] = {}
    non_tensor: list[str] = []
    for name, value in state_dict.items():
        name = str(name)
        p = _select(name, prefixes)
        if not isinstance(value, torch.Tensor):
            if p is not None:
                raise ValueError(
                    f"'{path}': state_dict entry '{name}' is not a tensor ({type(value).__name__}); corrupt checkpoint?"
                )
            non_tensor.append(name)
            continue
        if p is None:
            head = name.split(".", 1)[0] + ("." if "." in name else "")
            others[head] = others.get(head, 0) + 1
            continue
        tensors[name] = value
        selected[p] += 1
    report = CheckpointReport(
        path=path,
        format=fmt,
        mmap=mapped,
        selected=selected,
        other_prefixes=others,
        non_tensor_entries=non_tensor,
        ignored=ignored,
        unknown_classes=sorted(unknown),
    )
    return tensors, report


def strip_prefix(tensors: Mapping[str, torch.Tensor], prefix: str, new_prefix: str = "") -> dict[str, torch.Tensor]:
    """``{new_prefix + name[len(prefix):]: t}`` for the names starting with ``prefix``."""
    n = len(prefix)
    return {new_prefix + k[n:]: v for k, v in tensors.items() if k.startswith(prefix)}


def tensor_backing_file(t: torch.Tensor) -> str | None:
    """The file a CPU tensor's memory is mapped from (Linux ``/proc/self/maps``), or None (heap/anonymous memory or
    not determinable). Used to check that checkpoint tensors are views into the mmapped file, not copies."""
    fn = getattr(t.untyped_storage(), "filename", None)
    if fn:
        return fn
    ptr = t.data_ptr()
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split(None, 5)
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                if lo <= ptr < hi:
                    path = parts[5].strip() if len(parts) > 5 else ""
                    return path if path.startswith("/") else None
    except OSError:
        return None
    return None


# ----------------------------------------------------------------------------------------------------------------
# streaming safetensors writer
# ----------------------------------------------------------------------------------------------------------------
_ST_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
for _n, _c in (("float8_e4m3fn", "F8_E4M3"), ("float8_e5m2", "F8_E5M2"), ("uint16", "U16"), ("uint32", "U32"), ("uint64", "U64")):
    if hasattr(torch, _n):
        _ST_DTYPES[getattr(torch, _n)] = _c


def save_safetensors(
    tensors: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Mapping[str, str] | None = None
) -> Path:
    """Write a standard safetensors file, streaming one tensor at a time (atomic: temp file + rename)."""
    path = Path(path)
    names = sorted(tensors)
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for k in names:
        t = tensors[k]
        if t.dtype not in _ST_DTYPES:
            raise ValueError(f"cannot write tensor '{k}' of dtype {t.dtype} to safetensors")
        nbytes = t.numel() * t.element_size()
        header[k] = {"dtype": _ST_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    hbytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hbytes += b" " * (-len(hbytes) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(hbytes)))
            f.write(hbytes)
            for k in names:
                t = tensors[k].detach()
                if t.device.type != "cpu":
                    t = t.cpu()
                t = t.contiguous()
                if t.numel():
                    f.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
                del t
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    return path


# ----------------------------------------------------------------------------------------------------------------
# converter
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class ConversionReport:
    written: dict[str, Path]
    counts: dict[str, int]
    missing_parts: list[str]
    checkpoint: CheckpointReport

    def summary(self) -> str:
        lines = [self.checkpoint.summary()]
        for part, p in self.written.items():
            lines.append(f"  wrote    {p} ({self.counts[part]} tensors, part '{part}')")
        for part in self.missing_parts:
            lines.append(f"  missing  part '{part}' (no '{PARTS[part][0]}' tensors in the checkpoint): not written")
        return "\n".join(lines)


def convert_checkpoint(
    ckpt_path: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    name: str | None = None,
    *,
    report_to: Callable[[ConversionReport], None] | None = None,
) -> dict[str, Path]:
    """Split the official checkpoint into ``<name>.{base,cam,apm,image_encoder}.safetensors`` in ``out_dir``
    (default: the checkpoint's folder; ``name`` defaults to the checkpoint's stem). Returns part -> path.
    ``report_to`` (optional) receives a :class:`ConversionReport`."""
    ckpt_path = Path(ckpt_path)
    out = Path(out_dir) if out_dir is not None else ckpt_path.parent
    stem = name or ckpt_path.stem
    tensors, rep = read_checkpoint(ckpt_path, [p for p, _ in PARTS.values()])
    if not any(rep.selected[PARTS[k][0]] for k in ("base", "cam", "apm")):
        raise ValueError(
            f"'{ckpt_path}' holds no StreamingT2V tensors (no 'base_model.', 'unet.' or 'resampler.' names; "
            f"top-level state_dict prefixes: {sorted(rep.other_prefixes)})"
        )
    written: dict[str, Path] = {}
    counts: dict[str, int] = {}
    missing: list[str] = []
    for part, (src, dst) in PARTS.items():
        part_tensors = strip_prefix(tensors, src, dst)
        if not part_tensors:
            missing.append(part)
            continue
        meta = {
            "format": "pt",
            "streaming_t2v_part": part,
            "streaming_t2v_format_version": FORMAT_VERSION,
            "source_file": ckpt_path.name,
            "source_prefix": src,
            "target_prefix": dst,
            "converter": "streaming_t2v_core.convert",
        }
        if part == "image_encoder":
            meta["layout"] = "open_clip ViT-H-14 visual tower (visual.*)"
        written[part] = save_safetensors(part_tensors, out / f"{stem}.{part}.safetensors", meta)
        counts[part] = len(part_tensors)
        del part_tensors
    if report_to is not None:
        report_to(ConversionReport(written=written, counts=counts, missing_parts=missing, checkpoint=rep))
    return written
