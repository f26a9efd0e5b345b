#!/usr/bin/env bash
# Run HERE (a machine with package-index access), in the repository, before the device commands of README.md.
#
#   benchmarks/gpu/prepare.sh [--no-wheels] [--no-official]
#
# 1. Wheels for the device's python 3.12 / manylinux x86_64 into three ignored folders (installed there with
#    `pip install --no-index --no-deps --target`, one site dir per side):
#      .whl/ours/  diffusers==0.42.1 (our code; the device already has torch, transformers 5, huggingface_hub 1.x)
#      .whl/l2d/   the official Live2Diff stack: diffusers==0.25.0, huggingface_hub==0.25.2 (diffusers 0.25 imports
#                  cached_download), transformers==4.48.3 + tokenizers==0.21.4, omegaconf==2.4.0, timm==1.0.31
#                  (MiDaS DPT-Hybrid backbone; pinned: the device's own timm version is unknown)
#      .whl/st2v/  the official StreamingModelscope stack: diffusers==0.27.2, huggingface_hub==0.25.2,
#                  transformers==4.39.3 + tokenizers==0.15.2
#    Every Requires-Dist of every wheel is checked against the wheels of its set plus the device's package list
#    (KINDS.md, 2026-11-17); anything missing is printed.
# 2. The official sources, only their python files, configs and licences, into the ignored .official/:
#      .official/live2diff/                 open-mmlab/Live2Diff (live2diff/, configs/) + its live2diff/MiDaS
#                                           submodule (lewiji/MiDaS @ 2ae1545: midas/*.py)
#      .official/streamingt2v/              Picsart-AI-Research/StreamingT2V, branch StreamingModelscope
#                                           (t2v_enhanced/ without thirdparty/)
#    Sources (a source tree, or a git directory + ref), overridable by environment variables:
#      L2D_SRC   (default /tmp/official_live2diff, else /work/.mirror/open-mmlab+Live2Diff/repo)      L2D_REF=HEAD
#      MIDAS_SRC (default /work/.mirror/lewiji+MiDaS/repo)                                            MIDAS_REF=2ae1545
#      ST2V_SRC  (default /tmp/st2v_official, else /work/.mirror/Picsart-AI-Research+StreamingT2V/repo)
#                                                                                    ST2V_REF=StreamingModelscope
# 3. Prints the sizes: the device copies the working tree + carried folders, 64 MiB at most.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
cd "$REPO"
DO_WHEELS=1 DO_OFFICIAL=1
for a in "$@"; do
  case "$a" in
    --no-wheels) DO_WHEELS=0 ;;
    --no-official) DO_OFFICIAL=0 ;;
    *) echo "unknown option $a" >&2; exit 2 ;;
  esac
done

PIP_PLAT=(--no-deps --only-binary=:all: --python-version 3.12 --implementation cp
          --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
          --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
OURS_PKGS=(diffusers==0.42.1)
L2D_PKGS=(diffusers==0.25.0 huggingface_hub==0.25.2 transformers==4.48.3 tokenizers==0.21.4 omegaconf==2.4.0
          timm==1.0.31)
ST2V_PKGS=(diffusers==0.27.2 huggingface_hub==0.25.2 transformers==4.39.3 tokenizers==0.15.2)

download() {  # <dir> <pkg>...
  local dir=$1; shift
  rm -rf "$dir"; mkdir -p "$dir"
  python3 -m pip download -q --disable-pip-version-check "${PIP_PLAT[@]}" -d "$dir" "$@" 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory" || true
  local n; n=$(ls "$dir"/*.whl 2>/dev/null | wc -l)
  if [ "$n" -ne "$#" ]; then echo "ERROR: $dir holds $n wheels, expected $#" >&2; ls "$dir" >&2; exit 1; fi
}

if [ "$DO_WHEELS" = 1 ]; then
  grep -qx '/.whl/' .gitignore || echo '/.whl/' >> .gitignore
  download .whl/ours "${OURS_PKGS[@]}"
  download .whl/l2d "${L2D_PKGS[@]}"
  download .whl/st2v "${ST2V_PKGS[@]}"
  python3 - <<'EOF'
# Requires-Dist of each wheel vs (the wheels of its set + what the device has)
import re, zipfile, pathlib
DEVICE = """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers
flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
hypothesis idna imageio iniconfig interface-meta jax jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning
lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson
ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba
numba-cuda numpy numpyro onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx
optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client
propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio
torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer typing-extensions
typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp""".split()
norm = lambda s: re.sub(r"[-_.]+", "-", s).lower()
device = {norm(x) for x in DEVICE}
# python 3.12's importlib.metadata stands in for the importlib_metadata backport (diffusers imports the stdlib one)
stdlib = {"importlib-metadata"}
for d in sorted(pathlib.Path(".whl").iterdir()):
    wheels = sorted(d.glob("*.whl"))
    names = {norm(w.name.split("-")[0]) for w in wheels}
    missing = []
    for w in wheels:
        with zipfile.ZipFile(w) as z:
            meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
            for line in z.read(meta).decode().splitlines():
                if not line.startswith("Requires-Dist:") or "extra ==" in line:
                    continue
                req = line.split(":", 1)[1].strip()
                name = norm(re.split(r"[ ;<>=!~(\[]", req, maxsplit=1)[0])
                if name not in names and name not in device and name not in stdlib:
                    missing.append(f"{w.name.split('-')[0]} needs {req}")
    size = sum(w.stat().st_size for w in wheels)
    print(f".whl/{d.name}: {len(wheels)} wheels, {size / 2**20:.1f} MiB: {' '.join(w.name.split('-')[0] + '-' + w.name.split('-')[1] for w in wheels)}")
    for m in missing:
        print(f"  not on the device and not carried: {m}")
EOF
fi

first_existing() { for p in "$@"; do [ -e "$p" ] && { echo "$p"; return; }; done; echo "$1"; }
L2D_SRC=${L2D_SRC:-$(first_existing /tmp/official_live2diff /work/.mirror/open-mmlab+Live2Diff/repo)}
L2D_REF=${L2D_REF:-HEAD}
MIDAS_SRC=${MIDAS_SRC:-/work/.mirror/lewiji+MiDaS/repo}
MIDAS_REF=${MIDAS_REF:-2ae1545ad6941cc854c30675b2053fb8b7426aa7}
ST2V_SRC=${ST2V_SRC:-$(first_existing /tmp/st2v_official /work/.mirror/Picsart-AI-Research+StreamingT2V/repo)}
ST2V_REF=${ST2V_REF:-StreamingModelscope}

# export <src> <ref> <dest> <path>...: a git directory (bare or not) is archived at <ref>, a plain tree copied
export_src() {
  local src=$1 ref=$2 dest=$3; shift 3
  mkdir -p "$dest"
  if git --git-dir="$src" rev-parse --verify -q "$ref^{commit}" >/dev/null 2>&1; then
    local present=()
    for p in "$@"; do git --git-dir="$src" cat-file -e "$ref:$p" 2>/dev/null && present+=("$p"); done
    git --git-dir="$src" archive "$ref" -- "${present[@]}" | tar -x -C "$dest"
    echo "$dest <- $src @ $(git --git-dir="$src" rev-parse "$ref^{commit}")" >> .official/SOURCES.txt
  elif [ -d "$src/.git" ] && git -C "$src" rev-parse --verify -q "$ref^{commit}" >/dev/null 2>&1; then
    export_src "$src/.git" "$ref" "$dest" "$@"
    return
  elif [ -d "$src" ]; then
    local present=()
    for p in "$@"; do [ -e "$src/$p" ] && present+=("$p"); done
    tar -C "$src" -cf - "${present[@]}" | tar -x -C "$dest"
    echo "$dest <- $src (source tree, no git metadata)" >> .official/SOURCES.txt
  else
    echo "ERROR: source $src not found" >&2; exit 1
  fi
  # keep python files, configs and licences only
  find "$dest" -type f ! -name '*.py' ! -name '*.yaml' ! -name '*.yml' ! -name 'LICENSE*' -delete
  find "$dest" -type d -empty -delete
}

if [ "$DO_OFFICIAL" = 1 ]; then
  grep -qx '/.official/' .gitignore || echo '/.official/' >> .gitignore
  rm -rf .official; mkdir -p .official; : > .official/SOURCES.txt
  export_src "$L2D_SRC" "$L2D_REF" .official/live2diff live2diff configs LICENSE
  rm -rf .official/live2diff/live2diff/MiDaS
  export_src "$MIDAS_SRC" "$MIDAS_REF" .official/live2diff/live2diff/MiDaS midas LICENSE
  export_src "$ST2V_SRC" "$ST2V_REF" .official/streamingt2v t2v_enhanced LICENSE
  rm -rf .official/streamingt2v/t2v_enhanced/thirdparty
  [ -f .official/live2diff/live2diff/MiDaS/midas/dpt_depth.py ] || { echo "ERROR: MiDaS not exported" >&2; exit 1; }
  [ -f .official/streamingt2v/t2v_enhanced/model/diffusers_conditional/models/controlnet/controlnet.py ] \
    || { echo "ERROR: StreamingT2V not exported" >&2; exit 1; }
  cat .official/SOURCES.txt
fi

# what travels: tracked files + untracked-not-ignored files + the carried folders
tracked=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | xargs -0 -r du -cb 2>/dev/null | tail -1 | cut -f1)
whl=$(du -sb .whl 2>/dev/null | cut -f1 || echo 0)
off=$(du -sb .official 2>/dev/null | cut -f1 || echo 0)
total=$((tracked + ${whl:-0} + ${off:-0}))
python3 -c "import sys; t, w, o, s = (int(x) / 2**20 for x in sys.argv[1:]); print(f'sizes: working tree {t:.1f} MiB + .whl {w:.1f} MiB + .official {o:.1f} MiB = {s:.1f} MiB (limit 64 MiB)')" \
  "$tracked" "${whl:-0}" "${off:-0}" "$total"
[ "$total" -lt $((60 * 1048576)) ] || { echo "ERROR: over 60 MiB" >&2; exit 1; }
