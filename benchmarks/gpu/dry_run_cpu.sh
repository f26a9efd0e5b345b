#!/usr/bin/env bash
# CPU dry run of side_by_side.sh at tiny size, on a development machine without a GPU (python 3.11 here, so the
# device's py3.12 wheels are not installed; the sides' stacks come from existing interpreters instead):
#
#   PY_L2D=/tmp/l2d_official_venv/bin/python PY_ST2V=/tmp/st2v_official_venv/bin/python \
#       nice -n 10 benchmarks/gpu/dry_run_cpu.sh [live2diff|streaming_t2v|all]
#
# PY_OURS (default python3): diffusers >= 0.31, transformers, torch. PY_L2D: the official Live2Diff stack
# (diffusers 0.25, huggingface_hub < 0.26, transformers < 4.50, omegaconf). PY_ST2V: the official StreamingT2V stack
# (diffusers 0.27.2, huggingface_hub 0.25.2, transformers 4.39.3). Those two are the venvs of
# benchmarks/parity/README.md.
#
# The official Live2Diff side also needs timm (MiDaS backbone) and, as on the device, accelerate and peft; they go
# into an extra site dir (DRY_EXTRA, default /tmp/gpu_dry/l2d_extra) with torchvision, whose CUDA-only operator
# library does not load next to a CPU torch: a sitecustomize there skips torchvision's operator registrations (timm
# imports torchvision but the MiDaS path uses none of its operators). Needs the package index once.
# THREADS (default 1): torch CPU threads of every side (with 2 threads on 2 busy cores OpenMP spinning made a tiny
# Live2Diff frame ~100x slower).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
cd "$REPO"
WHAT=${1:-all}
PY_L2D=${PY_L2D:-/tmp/l2d_official_venv/bin/python}
PY_ST2V=${PY_ST2V:-/tmp/st2v_official_venv/bin/python}
PY_OURS=${PY_OURS:-python3}
EXTRA=${DRY_EXTRA:-/tmp/gpu_dry/l2d_extra}
if [ ! -f "$EXTRA/.ready" ]; then
  tv=$("$PY_L2D" -c "import torch; v = torch.__version__.split('+')[0].split('.'); print(f'0.{int(v[1]) + 15}.0')")
  tmp=$(mktemp -d)
  python3 -m pip download -q --no-deps -d "$tmp" "torchvision==$tv" timm==1.0.31 accelerate==1.15.0 peft==0.21.2 \
    --python-version "$("$PY_L2D" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')" \
    --only-binary=:all: 2>&1 | grep -v "is ignored" || true
  rm -rf "$EXTRA"; mkdir -p "$EXTRA"
  "$PY_L2D" -m pip install -q --no-deps --no-index --target "$EXTRA" "$tmp"/*.whl
  cat > "$EXTRA/sitecustomize.py" <<'EOF'
import sys, types
# torchvision's CUDA build cannot load its operator library next to a CPU torch; skip its fake-op registrations
sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
EOF
  rm -rf "$tmp"
  touch "$EXTRA/.ready"
fi
export PY_OURS PY_L2D PY_ST2V SITE_L2D="$EXTRA" THREADS=${THREADS:-1}
export OUT=${OUT:-/tmp/gpu_dry/out} WORK=${WORK:-/tmp/gpu_dry/work}
exec benchmarks/gpu/side_by_side.sh "$WHAT" --device cpu --size tiny --weights "${WEIGHTS:-/tmp/gpu_dry/weights}" \
  --budget "${BUDGET:-900}"
