"""Checkpoint reading and writing for StreamingT2V (plain torch + safetensors, no ComfyUI).

Public API
----------
``read_checkpoint(path, prefixes) -> (tensors, CheckpointReport)``
    Reads the official ``streaming_t2v.ckpt`` (a PyTorch-Lightning pickle in torch's zip format) memory-mapped,
    through a *restricted* unpickler: only torch's tensor/parameter rebuilders (without pickled hooks or Python
    state), storage types, dtypes and plain containers are resolved; every other global (Lightning, omegaconf, the
    official repo, numpy, ``exec``...) becomes an inert placeholder that is never called. ``torch.load`` is not used
    for zip files (we read ``data.pkl`` and the tensor records ourselves), so a TorchScript archive can never reach
    ``torch.jit.load``: it is refused by name. Legacy (pre-1.6) files go through ``torch.load(weights_only=True)``.
    Differs from the official code, which calls ``torch.load`` with full unpickling.

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
import io
import json
import os
import pickle
import struct
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
    if not isinstance(obj, str) or encoding.lower().replace("_", "-") not in (
            "latin1", "latin-1", "iso-8859-1", "utf-8", "utf8", "ascii"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode({type(obj).__name__}, {encoding!r})")
    return obj.encode(encoding, errors)


def _from_iterable(cls: type) -> Callable[..., Any]:
    """``cls(iterable)`` for a container class, refusing anything but pickled containers (no ``bytearray(10**12)``)."""
    def build(*args: Any) -> Any:
        if len(args) > 1 or (args and not isinstance(args[0], (list, tuple, dict, set, frozenset, str, bytes))):
            raise pickle.UnpicklingError(f"refusing {cls.__name__}{tuple(type(a).__name__ for a in args)}")
        return cls(*args)
    build.__name__ = cls.__name__
    return build


def _tensor_rebuilders() -> dict[tuple[str, str], Any]:
    """The allow-list: torch's functions that rebuild a tensor or parameter from a storage, plus dtypes and sizes.

    Parameters are rebuilt without their pickled backward hooks or Python state (an arbitrary attribute dict), so
    nothing from the file is attached to what the loaders return."""
    import torch._utils as tu

    def rebuild_parameter(data: Any, requires_grad: Any, *_hooks_and_state: Any) -> torch.nn.Parameter:
        if not isinstance(data, torch.Tensor):
            raise pickle.UnpicklingError("refusing a Parameter that does not wrap a tensor")
        return torch.nn.Parameter(data, requires_grad=bool(requires_grad))

    def rebuild_tensor(*args: Any) -> torch.Tensor:
        storage = args[0] if args else None
        if not isinstance(storage, torch.storage.TypedStorage):
            raise pickle.UnpicklingError("refusing a tensor whose storage is not one of the file's records")
        if len(args) < 4:
            raise pickle.UnpicklingError("refusing a tensor pickled without offset, size and stride")
        requires_grad = bool(args[4]) if len(args) > 4 else False
        # pickled backward hooks and metadata are dropped: nothing from the file is attached to the tensor
        return tu._rebuild_tensor_v2(storage, args[1], args[2], args[3], requires_grad, collections.OrderedDict())

    def rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> torch.Tensor:
        # tensors saved with a __dict__ (torch >= 1.13); only plain tensors/parameters, Python state dropped
        if func not in (rebuild_tensor, rebuild_parameter) or new_type not in (torch.Tensor, torch.nn.Parameter):
            raise pickle.UnpicklingError(f"refusing _rebuild_from_type_v2({func!r}, {new_type!r})")
        return func(*args)

    allowed: dict[tuple[str, str], Any] = {
        ("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): rebuild_parameter,
        ("torch._tensor", "_rebuild_from_type_v2"): rebuild_from_type_v2,
        ("torch", "Tensor"): torch.Tensor,
        ("torch._tensor", "Tensor"): torch.Tensor,
        ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
        ("torch", "Size"): torch.Size,
        ("collections", "OrderedDict"): _from_iterable(collections.OrderedDict),
        ("builtins", "set"): _from_iterable(set),
        ("builtins", "frozenset"): _from_iterable(frozenset),
        ("builtins", "bytearray"): _from_iterable(bytearray),
        ("_codecs", "encode"): _safe_codecs_encode,
    }
    if hasattr(tu, "_rebuild_meta_tensor_no_storage"):
        allowed[("torch._utils", "_rebuild_meta_tensor_no_storage")] = tu._rebuild_meta_tensor_no_storage
    for attr in dir(torch):
        val = getattr(torch, attr, None)
        if isinstance(val, (torch.dtype, torch.memory_format)):
            allowed[("torch", attr)] = val
    return allowed


class _StorageType:
    """What ``torch.FloatStorage`` & co. resolve to inside the file: only their element type (never called)."""

    def __init__(self, name: str) -> None:
        self.dtype = torch.uint8 if name == "UntypedStorage" else torch.serialization.StorageType(name).dtype


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves globals only from :func:`_tensor_rebuilders`; every other global becomes an inert
    :class:`UnknownObject` subclass (recorded in ``unknown``), so no module is imported and no function of the file's
    choosing is called. Storages come from ``storage(dtype, key, numel)`` (persistent ids of torch's zip format)."""

    def __init__(self, data: bytes, unknown: set[str], storage: Callable[[torch.dtype, str, int], Any]) -> None:
        super().__init__(io.BytesIO(data))
        self._unknown = unknown
        self._storage = storage
        self._allowed = _tensor_rebuilders()
        self._placeholders: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:  # noqa: D401 - pickle API
        module = {"__builtin__": "builtins", "copy_reg": "copyreg"}.get(module, module)  # protocol-2 names
        if module in ("torch", "torch.storage") and isinstance(name, str) and name.endswith("Storage"):
            try:
                return _StorageType(name)
            except (KeyError, AttributeError):
                pass
        obj = self._allowed.get((module, name))
        if obj is not None:
            return obj
        qual = f"{module}.{name}"
        self._unknown.add(qual)
        cls = self._placeholders.get(qual)
        if cls is None:
            safe = "".join(c if c.isalnum() or c == "_" else "_" for c in str(name)) or "Unknown"
            cls = type(safe, (UnknownObject,), {"_st2v_qualname": qual, "__module__": __name__ + ".unknown"})
            self._placeholders[qual] = cls
        return cls

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] in ("storage", b"storage")
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str) and isinstance(pid[4], int)):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r:.80}")
        return self._storage(pid[1].dtype, pid[2], pid[4])


def _is_torchscript(records: Iterable[str]) -> bool:
    """A TorchScript archive (``torch.jit.save``) carries code (``code/``, ``constants.pkl``) that ``torch.load``
    would hand to ``torch.jit.load``: refused by name, whatever else the archive holds."""
    return any(r == "constants.pkl" or r.startswith(("code/", ".data/ts_code")) for r in records)


def _load_torch_zip(path: Path, unknown: set[str]) -> Any:
    """Unpickle ``data.pkl`` of a torch zip checkpoint with :class:`_RestrictedUnpickler`, the tensors memory-mapped
    from the file. ``torch.load`` is never called, so no archive reaches ``torch.jit.load``."""
    reader = torch._C.PyTorchFileReader(str(path))
    records = reader.get_all_records()
    if _is_torchscript(records):
        raise ValueError(f"'{path}' is a TorchScript archive (it carries code that would run when loaded): refused. "
                         "Use the original checkpoint (a torch.save state dict) or a .safetensors file")
    if "data.pkl" not in records:
        raise ValueError(f"'{path}' is a zip file but not a torch checkpoint (no data.pkl)")
    if "byteorder" in records and reader.get_record("byteorder") not in (b"little",):
        raise ValueError(f"'{path}' was saved on a big-endian machine; convert it to .safetensors there")
    whole = torch.UntypedStorage.from_file(str(path), shared=False, nbytes=path.stat().st_size)
    loaded: dict[str, torch.storage.TypedStorage] = {}

    def storage(dtype: torch.dtype, key: str, numel: int) -> torch.storage.TypedStorage:
        if key not in loaded:
            name = f"data/{key}"
            nbytes = numel * torch.empty((), dtype=dtype).element_size()
            if name not in records or numel < 0 or nbytes > reader.get_record_size(name):
                raise pickle.UnpicklingError(f"tensor data '{name}' is missing or shorter than the pickle claims")
            offset = reader.get_record_offset(name)
            loaded[key] = torch.storage.TypedStorage(wrap_storage=whole[offset:offset + nbytes], dtype=dtype,
                                                     _internal=True)
        return loaded[key]

    return _RestrictedUnpickler(reader.get_record("data.pkl"), unknown, storage).load()


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
    if _is_zip(path):
        try:
            obj = _load_torch_zip(path, unknown)
        except ValueError:
            raise
        except Exception as e:
            raise ValueError(
                f"could not read checkpoint '{path}' (truncated or corrupt torch zip file?): {type(e).__name__}: {e}"
            ) from e
        return obj, "torch-zip", True
    # legacy (pre-1.6) torch.save format: torch's own allow-list unpickler (tensors and containers only)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=False)
    except Exception as e:
        raise ValueError(
            f"could not read checkpoint '{path}' (not a torch checkpoint, truncated/corrupt, or a legacy-format pickle "
            f"holding Python objects, which is refused for safety): {type(e).__name__}: {str(e)[:300]}"
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
