"""The pack's weight catalog (Live2Diff and StreamingT2V) and the one download routine behind the download node
and the command line (``python -m live2diff_core download live2diff``).

Every file a shipped workflow names by default is written by exactly one catalog entry, under that name, into the
ComfyUI model folder its loader reads (``tests/test_downloads.py`` checks the workflows against this table). Nothing
is downloaded unless a user asks: the download node, ``python -m live2diff_core download ...``, or the main job's
command line when files are missing.

A download is all or nothing: an entry's files are fetched into a staging folder beside the model folders
(``models/.stream-video-download-<pid>``), moved into place only when every file of the entry arrived (and, for the
StreamingT2V checkpoint, was converted), and the staging folder is removed whatever happens. Files already in place
are kept and not fetched again. Pure Python (``urllib`` streams every file with byte progress; ``huggingface_hub`` names the Hub's URLs
and lists repositories); the fetcher is a parameter so tests run the whole path with a stand-in.
"""
from __future__ import annotations

import fnmatch
import os
import shutil
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Protocol, Sequence

#: what to run after download, by name (``Entry.convert``): the caller supplies it (the StreamingT2V converter
#: lives in ``streaming_t2v_core``, which this core does not import)
Converter = Callable[[Path, Path], None]
#: ``progress(message, done, total)``: a file started (done=0), or bytes/files done of total (0 = unknown)
Progress = Callable[[str, int, int], None]

STAGING_PREFIX = ".stream-video-download-"
DOWNLOAD_NODE = "Download Official Weights (Live2Diff / StreamingT2V)"


@dataclass(frozen=True)
class Entry:
    """One catalog item: what lands at ``models/<folder>/<name>``.

    ``repo_id`` + ``remote``: a file of a Hugging Face repository. ``repo_id`` + ``include`` (``remote`` None): a
    model folder (diffusers/transformers layout) from the repository's files matching ``include``, safetensors
    preferred over ``.bin`` and plain weights over ``fp16`` variants. ``url``: a plain HTTPS file. ``convert``: a
    post-processing step (by name) that writes ``name`` from the fetched file; ``also`` are the other files it
    writes. ``size``: the download size, for people."""

    key: str
    what: str
    folder: str
    name: str
    size: str
    repo_id: str | None = None
    remote: str | None = None
    include: tuple[str, ...] = ()
    url: str | None = None
    convert: str | None = None
    also: tuple[str, ...] = ()

    @property
    def source(self) -> str:
        """Where it comes from, for messages and the README table."""
        if self.url:
            return self.url
        return f"huggingface.co/{self.repo_id}" + (f" ({self.remote})" if self.remote else "")

    @property
    def is_folder(self) -> bool:
        return self.remote is None and self.url is None

    @property
    def file_url(self) -> str | None:
        """A direct URL of the single file (what ComfyUI's missing-models dialog offers); None for folders and for
        converted files, which no URL serves."""
        if self.url:
            return self.url
        if self.remote and not self.convert:
            return f"https://huggingface.co/{self.repo_id}/resolve/main/{self.remote}"
        return None


_DIFFUSERS_PIPELINE = ("model_index.json", "scheduler/*", "text_encoder/*", "tokenizer/*", "unet/*", "vae/*")
_CLIP = ("config.json", "model.safetensors", "pytorch_model.bin", "preprocessor_config.json", "tokenizer.json",
         "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json")

ENTRIES: tuple[Entry, ...] = (
    # ---- Live2Diff (the main job; the smaller set)
    Entry("sd15", "Stable Diffusion 1.5 base (or put any SD1.5 DreamBooth beside it)", "checkpoints",
          "v1-5-pruned-emaonly.safetensors", "~4.3 GB", "stable-diffusion-v1-5/stable-diffusion-v1-5",
          "v1-5-pruned-emaonly.safetensors"),
    Entry("live2diff", "Live2Diff motion modules + depth mapping", "live2diff", "live2diff.ckpt", "~1.7 GB",
          "Leoxing/Live2Diff", "live2diff.ckpt"),
    Entry("midas", "MiDaS DPT-Hybrid depth estimator (official release file)", "live2diff", "dpt_hybrid_384.pt",
          "~0.5 GB", url="https://github.com/isl-org/MiDaS/releases/download/v3/dpt_hybrid_384.pt"),
    Entry("taesd_encoder", "TAESD encoder (tiny VAE)", "vae_approx", "taesd_encoder.safetensors", "~1.2 MB",
          "madebyollin/taesd", "taesd_encoder.safetensors"),
    Entry("taesd_decoder", "TAESD decoder (tiny VAE)", "vae_approx", "taesd_decoder.safetensors", "~1.2 MB",
          "madebyollin/taesd", "taesd_decoder.safetensors"),
    Entry("lcm_lora", "LCM-LoRA for SD1.5", "loras", "lcm-lora-sdv1-5.safetensors", "~135 MB",
          "latent-consistency/lcm-lora-sdv1-5", "pytorch_lora_weights.safetensors"),
    # ---- StreamingT2V
    Entry("modelscope", "ModelScope text-to-video (first chunk, text encoder, VAE)", "diffusers",
          "text-to-video-ms-1.7b", "~5.7 GB", "damo-vilab/text-to-video-ms-1.7b", include=_DIFFUSERS_PIPELINE),
    Entry("streaming_t2v", "StreamingT2V CAM + APM + fine-tuned base (official checkpoint, converted once; the "
          "25 GB original is not kept)", "streamingt2v", "streaming_t2v.base.safetensors", "~25 GB",
          "PAIR/StreamingT2V", "streaming_t2v.ckpt", convert="streaming_t2v",
          also=("streaming_t2v.cam.safetensors", "streaming_t2v.apm.safetensors",
                "streaming_t2v.image_encoder.safetensors")),
    Entry("zeroscope_xl", "zeroscope_v2_XL refiner (randomized-blend upscaling to 1280x720)", "diffusers",
          "zeroscope_v2_XL", "~3.5 GB", "cerspense/zeroscope_v2_XL", include=_DIFFUSERS_PIPELINE),
    Entry("clip_l14", "CLIP ViT-L/14 (the CLIP score metric)", "text_encoders", "clip-vit-large-patch14", "~1.7 GB",
          "openai/clip-vit-large-patch14", include=_CLIP),
    # ---- optional
    Entry("clip_vit_h14", "OpenCLIP ViT-H/14 image tower (APM image encoder, when not converted from the "
          "checkpoint)", "clip_vision", "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors", "~3.9 GB",
          "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", "model.safetensors"),
)

BY_KEY: dict[str, Entry] = {e.key: e for e in ENTRIES}

#: named sets (the command line's and the node's choices); Live2Diff first, the smaller set
SETS: dict[str, tuple[str, ...]] = {
    "live2diff": ("sd15", "live2diff", "midas", "taesd_encoder", "taesd_decoder", "lcm_lora"),
    "streamingt2v": ("modelscope", "streaming_t2v", "zeroscope_xl", "clip_l14"),
}
SET_TITLES = {"live2diff": "all Live2Diff files", "streamingt2v": "all StreamingT2V files"}


def choices() -> list[str]:
    """The node's choices: the two sets first (Live2Diff, the smaller, first), then every entry."""
    return [SET_TITLES[s] for s in SETS] + [_entry_choice(e) for e in ENTRIES]


def _entry_choice(e: Entry) -> str:
    return f"{e.name} ({e.size}, models/{e.folder})"


def entries_for(choice: str) -> list[Entry]:
    """The entries behind a node choice, a set name (``live2diff``, ``streamingt2v``, ``all``) or an entry key or
    file name."""
    for s, keys in SETS.items():
        if choice in (s, SET_TITLES[s]):
            return [BY_KEY[k] for k in keys]
    if choice == "all":
        return [BY_KEY[k] for keys in SETS.values() for k in keys]
    for e in ENTRIES:
        if choice in (e.key, e.name) or choice.startswith(f"{e.name} ("):
            return [e]
    raise KeyError(f"unknown download {choice!r}: use one of {', '.join(SETS)}, all, "
                   f"{', '.join(e.key for e in ENTRIES)}")


def entry_for_file(folder: str, name: str) -> Entry | None:
    """The catalog entry that writes ``models/<folder>/<name>`` (also the extra files a conversion writes)."""
    for e in ENTRIES:
        if e.folder == folder and (name == e.name or name in e.also):
            return e
    return None


def how_to_get(folder: str, name: str) -> str:
    """One sentence for a missing file: the download node choice and the command line, or where to put it."""
    e = entry_for_file(folder, name)
    if e is None:
        return f"put it into models/{folder}"
    sets = [s for s, keys in SETS.items() if e.key in keys]
    choice = SET_TITLES[sets[0]] if sets else e.name
    command = sets[0] if sets else e.key
    return (f"get it with the '{DOWNLOAD_NODE}' node (choice '{choice}') or `python -m live2diff_core download "
            f"{command}` in the pack's folder; it comes from {e.source}")


def missing_message(missing: Sequence[tuple[str, str]]) -> str:
    """What a loader says when files are missing: every ``(folder, name)`` at once, then how to get them."""
    lines = ["Missing model files (nothing was run):"]
    sets: list[str] = []
    for folder, name in missing:
        e = entry_for_file(folder, name)
        where = f"models/{folder}/{name}"
        if e is None:
            lines.append(f"- {where}: not in the download catalog; put your file there or pick another one")
            continue
        lines.append(f"- {where} ({e.size}, {e.source})")
        sets += [s for s, keys in SETS.items() if e.key in keys and s not in sets] or \
            ([e.key] if e.key not in sets else [])
    if sets:
        node_choices = ", ".join(f"'{SET_TITLES[s] if s in SETS else _entry_choice(BY_KEY[s])}'" for s in sets)
        lines.append(f"Get them with the '{DOWNLOAD_NODE}' node (choice {node_choices}) or, in the pack's folder, "
                     + " and ".join(f"`python -m live2diff_core download {s}`" for s in sets)
                     + "; then press R in ComfyUI to refresh the lists.")
    return "\n".join(lines)


def is_present(entry: Entry, root: Path) -> bool:
    """Whether ``entry`` is already in place under its model folder ``root``."""
    target = root / entry.name
    if entry.is_folder:
        return target.is_dir() and any((target / m).is_file() for m in ("model_index.json", "config.json"))
    return target.is_file()


def select_files(files: Iterable[str], include: Sequence[str]) -> list[str]:
    """The files of a repository to fetch for a model folder: those matching ``include``, then per directory
    ``.safetensors`` over ``.bin``/``.pth``/``.ckpt``/``.pt``, and plain weights over ``*.fp16.*`` variants."""
    picked = [f for f in files if any(fnmatch.fnmatchcase(f, pat) for pat in include)]
    by_dir: dict[str, list[str]] = {}
    for f in picked:
        by_dir.setdefault(str(PurePosixPath(f).parent), []).append(f)
    out: list[str] = []
    for names in by_dir.values():
        plain = [f for f in names if ".fp16." not in f]
        has_plain_weights = any(f.endswith((".safetensors", ".bin")) for f in plain)
        names = plain if has_plain_weights else names
        has_safetensors = any(f.endswith(".safetensors") for f in names)
        out += [f for f in names if not (has_safetensors and f.endswith((".bin", ".pth", ".ckpt", ".pt")))]
    return sorted(out)


class Fetcher(Protocol):
    """Where bytes come from (``HubFetcher``; tests use a stand-in)."""

    def list_files(self, repo_id: str) -> list[str]: ...

    def fetch(self, repo_id: str, filename: str, dest: Path, progress: Progress | None) -> None: ...

    def fetch_url(self, url: str, dest: Path, progress: Progress | None) -> None: ...


class OfflineError(RuntimeError):
    """A download that could not reach its source."""


class HubFetcher:
    """Hugging Face Hub files by their resolve URL (``huggingface_hub.hf_hub_url``: ``HF_ENDPOINT`` and a saved token
    are honoured) and plain HTTPS, streamed to disk in 1 MiB pieces with byte progress; the progress callback may
    raise to stop (ComfyUI's Cancel)."""

    def list_files(self, repo_id: str) -> list[str]:
        from huggingface_hub import list_repo_files

        return list_repo_files(repo_id)

    def fetch(self, repo_id: str, filename: str, dest: Path, progress: Progress | None) -> None:
        from huggingface_hub import get_token, hf_hub_url

        token = get_token()
        self.fetch_url(hf_hub_url(repo_id, filename), dest, progress,
                       headers={"Authorization": f"Bearer {token}"} if token else None)

    def fetch_url(self, url: str, dest: Path, progress: Progress | None, headers: dict | None = None) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        request = urllib.request.Request(url, headers={"User-Agent": "stream-video-diffusion", **(headers or {})})
        with urllib.request.urlopen(request, timeout=60) as response, open(dest, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            while chunk := response.read(1 << 20):
                out.write(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(dest.name, done, total)
        if total and done != total:
            raise OSError(f"connection closed after {done} of {total} bytes")


def _stale_staging(models_dir: Path) -> None:
    """Remove staging folders of download processes that no longer run (a killed download). POSIX only: on Windows
    ``os.kill(pid, 0)`` is not a probe."""
    if os.name == "nt" or not models_dir.is_dir():
        return
    for p in models_dir.glob(STAGING_PREFIX + "*"):
        try:
            pid = int(p.name[len(STAGING_PREFIX):])
        except ValueError:
            continue
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


def _describe_failure(entry: Entry, target: Path, exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    offline = any(s in text.lower() for s in ("connection", "resolve", "network", "offline", "timed out",
                                              "unreachable", "urlopen error"))
    head = (f"could not reach {entry.source} (offline?)" if offline else
            f"could not download {entry.name} from {entry.source}")
    return (f"{head}: {text}. Nothing was written. Retry when online, or download it by hand into {target}"
            + (f" (from {entry.file_url})" if entry.file_url else ""))


def download(entries: Sequence[Entry], folder_root: Callable[[str], Path], models_dir: Path, *,
             fetcher: Fetcher | None = None, converters: dict[str, Converter] | None = None,
             progress: Progress | None = None, log: Callable[[str], None] = print) -> list[Path]:
    """Fetch the ``entries`` that are not in place into ``folder_root(entry.folder)``; return every entry's path.

    All or nothing per entry: files go to ``models_dir/.stream-video-download-<pid>`` first and are moved into
    place when the entry is complete; the staging folder is removed on success, error and interrupt. A failure
    raises :class:`OfflineError` (network) or ``RuntimeError`` naming the source and the target."""
    fetcher = fetcher or HubFetcher()
    converters = converters or {}
    _stale_staging(models_dir)
    out: list[Path] = []
    for i, entry in enumerate(entries):
        root = folder_root(entry.folder)
        target = root / entry.name
        out.append(target)
        if is_present(entry, root):
            log(f"[{i + 1}/{len(entries)}] {entry.folder}/{entry.name}: already there")
            continue
        if entry.convert and entry.convert not in converters:
            raise RuntimeError(f"{entry.name} needs the '{entry.convert}' conversion, which this caller cannot run")
        log(f"[{i + 1}/{len(entries)}] {entry.folder}/{entry.name} ({entry.size}) from {entry.source}")
        staging = models_dir / f"{STAGING_PREFIX}{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            try:
                staged = _fetch_entry(entry, staging, fetcher, progress)
            except Exception as exc:
                message = _describe_failure(entry, target, exc)
                raise (OfflineError if "offline?" in message else RuntimeError)(message) from exc
            if entry.convert:
                converted = staging / "converted"
                converted.mkdir()
                converters[entry.convert](staged, converted)
                produced = [converted / n for n in (entry.name, *entry.also)]
                missing = [p.name for p in produced if not p.exists()]
                if missing:
                    raise RuntimeError(f"converting {staged.name} did not write {', '.join(missing)}")
                moves = [(p, root / p.name) for p in produced]
            else:
                moves = [(staged, target)]
            root.mkdir(parents=True, exist_ok=True)
            for src, dst in moves:
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(src), dst)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return out


def _fetch_entry(entry: Entry, staging: Path, fetcher: Fetcher, progress: Progress | None) -> Path:
    """The entry's file or folder, complete, inside ``staging``."""
    if entry.url:
        dest = staging / PurePosixPath(entry.name).name
        fetcher.fetch_url(entry.url, dest, progress)
        return dest
    if entry.remote:
        dest = staging / PurePosixPath(entry.remote).name
        fetcher.fetch(entry.repo_id, entry.remote, dest, progress)
        return dest
    folder = staging / PurePosixPath(entry.name).name
    files = select_files(fetcher.list_files(entry.repo_id), entry.include)
    if not files:
        raise RuntimeError(f"huggingface.co/{entry.repo_id} has no files matching {', '.join(entry.include)}")
    for n, f in enumerate(files):
        if progress is not None:
            progress(f, n, len(files))
        fetcher.fetch(entry.repo_id, f, folder / f, progress)
    return folder


def catalog_table() -> str:
    """The catalog as a Markdown table (the README's)."""
    rows = ["| set | what | source (Hugging Face repo and file, or URL) | saved as | size |", "|---|---|---|---|---|"]
    for e in ENTRIES:
        sets = [SET_TITLES[s] for s, keys in SETS.items() if e.key in keys] or ["optional"]
        source = e.url or f"`{e.repo_id}`" + (f" `{e.remote}`" if e.remote else " (model folder)")
        saved = f"`models/{e.folder}/{e.name}`" + (" (+ " + ", ".join(f"`{a}`" for a in e.also) + ")" if e.also
                                                   else "")
        rows.append(f"| {sets[0]} | {e.what} | {source} | {saved} | {e.size} |")
    return "\n".join(rows)
