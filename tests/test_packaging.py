"""Packaging: ``pip wheel .`` builds a wheel that carries the two cores with their shipped configs and tokenizer
files, the cores import and find those files from the installed wheel, and ``pyproject.toml`` has the Comfy Registry
fields (PublisherId, DisplayName, Icon, a ``requires-comfyui`` with both bounds).

The wheel is built from a copy of the working tree (pip writes ``build/`` and ``*.egg-info`` into the source folder,
which is shared with other runs), offline (``--no-build-isolation``: the build backend is this interpreter's
setuptools), and skipped with the reason when pip or a recent enough setuptools is missing.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORES = ("live2diff_core", "streaming_t2v_core")
BUILD_SECONDS = 60
MIN_SETUPTOOLS = (77, 0)  # [build-system] requires setuptools>=77 (PEP 639 license string)
# Files the cores open at run time; a wheel without them imports fine and fails later.
MUST_SHIP = (
    "live2diff_core/configs/sd15/unet/config.json",
    "live2diff_core/configs/sd15/vae/config.json",
    "live2diff_core/configs/sd15/text_encoder/config.json",
    "live2diff_core/configs/sd15/scheduler/scheduler_config.json",
    "live2diff_core/configs/sd15/tokenizer/vocab.json",
    "live2diff_core/configs/sd15/tokenizer/merges.txt",
    "live2diff_core/configs/sd15/tokenizer/tokenizer_config.json",
    "live2diff_core/configs/sd15/tokenizer/special_tokens_map.json",
    "live2diff_core/configs/taesd/config.json",
    "live2diff_core/configs/dpt_hybrid/config.json",
    "streaming_t2v_core/configs/modelscope/unet/config.json",
    "streaming_t2v_core/configs/modelscope/scheduler/scheduler_config.json",
    "streaming_t2v_core/configs/clip_vit_h14/config.json",
)
# Not copied into the build folder: caches, earlier build output, model weights.
COPY_IGNORE = shutil.ignore_patterns(".git", "__pycache__", ".pytest_cache", ".benchmarks", "build", "dist",
                                     "*.egg-info", ".venv", ".official", ".whl", "*.safetensors", "*.ckpt", "*.pt",
                                     "*.pth", "*.bin")


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:2])


def _why_no_build() -> str | None:
    if importlib.util.find_spec("pip") is None:
        return f"pip is not installed for {sys.executable}"
    try:  # the version from its metadata: importing setuptools here would fight an already imported distutils
        version = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        return f"setuptools is not installed for {sys.executable} (the offline wheel build uses it)"
    if _version_tuple(version) < MIN_SETUPTOOLS:
        return (f"setuptools {version} is older than {'.'.join(map(str, MIN_SETUPTOOLS))}, "
                "which pyproject.toml's [build-system] requires")
    return None


def _pyproject() -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml on Python 3.10 needs tomli")
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    reason = _why_no_build()
    if reason:
        pytest.skip(reason)
    src = tmp_path_factory.mktemp("src") / REPO.name
    shutil.copytree(REPO, src, ignore=COPY_IGNORE)
    out = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    cmd = [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "--no-cache-dir",
           "-w", str(out)]
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=4 * BUILD_SECONDS)
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, f"pip wheel failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    assert elapsed < BUILD_SECONDS, f"pip wheel took {elapsed:.1f} s (limit {BUILD_SECONDS} s)"
    wheels = list(out.glob("*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def _names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as zf:
        return {n for n in zf.namelist() if not n.endswith("/")}


def test_wheel_holds_only_the_two_cores(wheel):
    names = _names(wheel)
    top = {n.split("/", 1)[0] for n in names}
    dist_info = {t for t in top if t.endswith(".dist-info")}
    assert len(dist_info) == 1, top
    # No ComfyUI glue: a top-level `nodes` package would shadow ComfyUI's own `nodes` module.
    assert top - dist_info == set(CORES), top
    name = _pyproject()["project"]["name"]
    assert next(iter(dist_info)).lower().startswith(re.sub(r"[-_.]+", "_", name).lower() + "-")


def test_wheel_carries_every_module_config_and_tokenizer_file(wheel):
    names = _names(wheel)
    missing = [p for p in MUST_SHIP if p not in names]
    assert not missing, f"not in the wheel: {missing}"
    for core in CORES:
        root = REPO / core
        modules = {f"{core}/{p.name}" for p in root.glob("*.py")}
        assert modules <= names, f"modules not in the wheel: {sorted(modules - names)}"
        # Every data file under configs/ (the generator scripts beside them excepted) is shipped, so a new
        # config kind cannot be dropped silently by the package-data globs.
        data = {f"{core}/{p.relative_to(root).as_posix()}" for p in (root / "configs").rglob("*")
                if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts}
        shipped = {n for n in names if n.startswith(f"{core}/configs/")}
        assert data == shipped, f"in the tree, not the wheel: {sorted(data - shipped)}; " \
                                f"in the wheel, not the tree: {sorted(shipped - data)}"


def test_installed_cores_find_their_configs(wheel, tmp_path):
    """The wheel unpacked as site-packages would hold it: the cores import from there (not from the checkout) and
    read their shipped configs and tokenizer through their own module constants."""
    for mod in ("torch", "diffusers", "transformers"):
        pytest.importorskip(mod, reason=f"importing the cores needs {mod}")
    site = tmp_path / "site-packages"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    script = r"""
import json, sys
from pathlib import Path
site = Path(sys.argv[1]).resolve()
import live2diff_core, streaming_t2v_core
from live2diff_core import depth, scheduler, sd_checkpoint, vae
from streaming_t2v_core import image_encoder, model, pipeline
for m in (live2diff_core, streaming_t2v_core):
    assert Path(m.__file__).resolve().is_relative_to(site), m.__file__
paths = [scheduler.SCHEDULER_CONFIG, sd_checkpoint.SHIPPED_CONFIG_DIR / "unet" / "config.json",
         depth.DEFAULT_DPT_HYBRID_CONFIG, vae.TAESD_CONFIG_DIR / "config.json", model.SHIPPED_UNET_CONFIG,
         pipeline.SCHEDULER_CONFIG, image_encoder.DEFAULT_CONFIG_DIR / "config.json"]
for p in paths:
    assert Path(p).resolve().is_relative_to(site), p
    assert isinstance(json.loads(Path(p).read_text()), dict), p
from transformers import CLIPTokenizer
tok = CLIPTokenizer.from_pretrained(str(sd_checkpoint.SHIPPED_CONFIG_DIR / "tokenizer"))
ids = tok("a photo of a cat").input_ids
assert ids[0] == 49406 and ids[-1] == 49407 and len(ids) > 2, ids
print("ok")
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)
    proc = subprocess.run([sys.executable, "-c", script, str(site)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout[-3000:] + proc.stderr[-3000:]


def test_registry_fields():
    data = _pyproject()
    comfy = data["tool"]["comfy"]
    for key in ("PublisherId", "DisplayName", "Icon"):
        assert isinstance(comfy.get(key), str) and comfy[key].strip(), f"[tool.comfy] {key} is empty"
    icon = comfy["Icon"]
    assert re.match(r"https://\S+\.(svg|png|jpe?g|gif)$", icon, re.I), f"Icon is not an image URL: {icon}"
    # The Icon is a raw URL into this repository: the file must be in the checkout, square, at most 400x400.
    repo_url = data["project"]["urls"]["Repository"].rstrip("/")
    owner_repo = repo_url.removeprefix("https://github.com/")
    m = re.match(rf"https://raw\.githubusercontent\.com/{re.escape(owner_repo)}/[^/]+/(.+)$", icon)
    assert m, f"Icon {icon} is not a raw URL into {repo_url}"
    icon_file = REPO / m.group(1)
    assert icon_file.is_file(), f"Icon file {icon_file} is not in the repository"
    if icon_file.suffix.lower() != ".svg":
        image = pytest.importorskip("PIL.Image")
        with image.open(icon_file) as im:
            w, h = im.size
        assert w == h and w <= 400, f"Icon is {w}x{h}: the registry wants a square of at most 400x400"

    spec_text = comfy.get("requires-comfyui", "")
    assert spec_text.strip(), "[tool.comfy] requires-comfyui is empty"
    from packaging.specifiers import SpecifierSet
    spec = SpecifierSet(spec_text)
    ops = {s.operator for s in spec}
    assert ops & {">=", ">", "~=", "=="}, f"requires-comfyui {spec_text!r} has no lower bound"
    assert ops & {"<", "<=", "~=", "=="}, f"requires-comfyui {spec_text!r} has no upper bound"
    assert "0.3.64" in spec, f"requires-comfyui {spec_text!r} excludes 0.3.64, the release CI tests"
    # `web` would make ComfyUI serve ./web a second time (it is WEB_DIRECTORY already).
    assert not comfy.get("web"), "[tool.comfy] web duplicates WEB_DIRECTORY"


def test_locales_title_the_template_category():
    """The frontend titles a pack's template category with `templateWorkflows.category.<install folder>`, else the
    folder name: every locale maps both usual folder names (registry install: the project name; git clone: the
    repository name) to the DisplayName."""
    data = _pyproject()
    title = data["tool"]["comfy"]["DisplayName"]
    folders = {data["project"]["name"], data["project"]["urls"]["Repository"].rstrip("/").rsplit("/", 1)[-1]}
    files = sorted((REPO / "locales").glob("*/main.json"))
    assert any(f.parent.name == "en" for f in files), "no locales/en/main.json"
    for f in files:
        category = json.loads(f.read_text(encoding="utf-8"))["templateWorkflows"]["category"]
        for folder in folders:
            key = folder.replace(".", "_")  # the frontend's normalizeI18nKey
            assert category.get(key) == title, f"{f.relative_to(REPO)}: category {key!r} is not {title!r}"
