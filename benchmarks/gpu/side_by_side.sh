#!/usr/bin/env bash
# Side-by-side speed of our code and the official implementations, on the device machine (or a CPU dry run).
#
#   benchmarks/gpu/side_by_side.sh <live2diff|streaming_t2v|all> [--device cuda|cpu] [--size real|tiny]
#                                  [--weights DIR] [--budget SECONDS]
#
# Needs (prepare.sh, run beforehand where the package index is reachable): .whl/{ours,l2d,st2v}/ and
# .official/{live2diff,streamingt2v}/, carried to the device with the working tree.
#
# 1. installs each wheel set into its own site dir (/tmp/site_ours, /tmp/site_l2d, /tmp/site_st2v; python3 -m pip
#    install --no-index --no-deps --target), unless PY_OURS / PY_L2D / PY_ST2V name an interpreter to use instead
#    (then SITE_OURS / SITE_L2D / SITE_ST2V, optional, are prepended to its PYTHONPATH);
# 2. builds the random-weight files once (make_weights.py; --weights, default /tmp/weights);
# 3. runs OUR side and THEIR side as separate processes, each with its own PYTHONPATH, each under `timeout`
#    within one overall budget (--budget, default 560 s: the device allows 600 s per command);
# 4. merges the sides' JSON files into $OUT/side_by_side_<what>-<cuda|cpu>-<date>.json and prints a table.
# Logs: $OUT/<what>-setup.log, $OUT/<what>-ours.log, $OUT/<what>-official.log. A failing or timed-out step is
# recorded and the script goes on; a side killed by its limit keeps what it had already written.
#
# Environment: OUT (default /tmp/side_by_side_out), WORK (default /tmp/gpu_work), FRAMES (Live2Diff streamed
# frames, default 200 real / 4 tiny), REPEATS (StreamingT2V steps, default 20 real / 2 tiny),
# L2D_OURS_MODES (default "cuda_graph none" on cuda, "none" on cpu), L2D_OFFICIAL_MODES (default
# "none compile-hot" on cuda, "none" on cpu), ST2V_COMPILE (1 on cuda: also our torch.compile phase), THREADS.
set -uo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
cd "$REPO"
WHAT=${1:-}
shift || true
DEVICE=cuda SIZE=real WEIGHTS=/tmp/weights BUDGET=560
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --size) SIZE=$2; shift 2 ;;
    --weights) WEIGHTS=$2; shift 2 ;;
    --budget) BUDGET=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
case "$WHAT" in live2diff|streaming_t2v|all) ;; *)
  echo "usage: $0 <live2diff|streaming_t2v|all> [--device cuda|cpu] [--size real|tiny] [--weights DIR] [--budget S]" >&2
  exit 2 ;;
esac
OUT=${OUT:-/tmp/side_by_side_out}
WORK=${WORK:-/tmp/gpu_work}
mkdir -p "$OUT" "$WORK/weights_info"
GPU=$([ "$DEVICE" = cpu ] && echo 0 || echo 1)
if [ "$SIZE" = real ]; then FRAMES=${FRAMES:-200}; REPEATS=${REPEATS:-20}; WARMUP=3; SKIP=10
else FRAMES=${FRAMES:-4}; REPEATS=${REPEATS:-2}; WARMUP=1; SKIP=1; fi
if [ "$GPU" = 1 ]; then
  DTYPE=float16
  L2D_OURS_MODES=${L2D_OURS_MODES:-cuda_graph none}
  L2D_OFFICIAL_MODES=${L2D_OFFICIAL_MODES:-none compile-hot}
  ST2V_COMPILE=${ST2V_COMPILE:-1}
else
  DTYPE=float32
  L2D_OURS_MODES=${L2D_OURS_MODES:-none}
  L2D_OFFICIAL_MODES=${L2D_OFFICIAL_MODES:-none}
  ST2V_COMPILE=${ST2V_COMPILE:-0}
fi
THREADS=${THREADS:-0}
START=$(date +%s)
T0_ALL=$START
RESERVE=15
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HOME="$WORK/hf_home" PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore \
  TOKENIZERS_PARALLELISM=false TORCHINDUCTOR_CACHE_DIR="$WORK/inductor" DISABLE_TELEMETRY=1 HF_HUB_DISABLE_TELEMETRY=1
unset PYTHONPATH

remaining() { echo $((START + BUDGET - $(date +%s))); }

# step <what> <name> <cap seconds> <log> <command...>: time-boxed, recorded in $WORK/<what>/steps.tsv
step() {
  local what=$1 name=$2 cap=$3 log=$4; shift 4
  local left=$(( $(remaining) - RESERVE ))
  local t=$(( cap < left ? cap : left ))
  if [ "$t" -lt 20 ]; then
    echo "[side_by_side] skip $name: ${left}s of the budget left" | tee -a "$log"
    printf '%s\tskipped (budget)\t0\n' "$name" >> "$WORK/$what/steps.tsv"
    return 99
  fi
  echo "[side_by_side] === $name (limit ${t}s, $(date -u +%T)) $*" | tee -a "$log"
  local t0; t0=$(date +%s)
  local -a cmd=("$@")
  if side_prefix "$1"; then cmd=("${PREFIX[@]}" "${@:2}"); fi
  timeout --kill-after=10 "$t" "${cmd[@]}" >> "$log" 2>&1
  local rc=$?
  local dt=$(( $(date +%s) - t0 ))
  local status=ok
  [ $rc -eq 124 ] || [ $rc -eq 137 ] && status="timeout(${t}s)"
  [ $rc -ne 0 ] && [ "$status" = ok ] && status="exit $rc"
  printf '%s\t%s\t%s\n' "$name" "$status" "$dt" >> "$WORK/$what/steps.tsv"
  echo "[side_by_side] --- $name: $status after ${dt}s" | tee -a "$log"
  tail -n 3 "$log" | sed 's/^/    /'
  return $rc
}

# run_<side> <args...>: the side's interpreter with its own PYTHONPATH (side_prefix: the same as an argv prefix)
side_prefix() {
  case "$1" in
    run_ours) PREFIX=(env "PYTHONPATH=${SITE_OURS:-}" "${PY_OURS_BIN:-python3}") ;;
    run_l2d) PREFIX=(env "PYTHONPATH=${SITE_L2D:-}" "${PY_L2D_BIN:-python3}") ;;
    run_st2v) PREFIX=(env "PYTHONPATH=${SITE_ST2V:-}" "${PY_ST2V_BIN:-python3}") ;;
    *) PREFIX=() ; return 1 ;;
  esac
}
run_ours() { side_prefix run_ours; "${PREFIX[@]}" "$@"; }
run_l2d() { side_prefix run_l2d; "${PREFIX[@]}" "$@"; }
run_st2v() { side_prefix run_st2v; "${PREFIX[@]}" "$@"; }

install_site() {  # <name> <wheel dir> <site dir> <log>
  local name=$1 whl=$2 site=$3 log=$4
  if ! ls "$whl"/*.whl >/dev/null 2>&1; then
    echo "[side_by_side] no wheels in $whl (run benchmarks/gpu/prepare.sh first)" | tee -a "$log"; return 1
  fi
  rm -rf "$site"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
    "$whl"/*.whl >> "$log" 2>&1 || { echo "[side_by_side] pip install of $whl failed" | tee -a "$log"; return 1; }
  echo "[side_by_side] $name: $(ls "$whl" | tr '\n' ' ') -> $site" >> "$log"
}

setup_side() {  # <ours|l2d|st2v> <log>: interpreter + site dir for one side
  local side=$1 log=$2 py_var site_var
  py_var="PY_${side^^}"; site_var="SITE_${side^^}"
  if [ -n "${!py_var:-}" ]; then
    eval "PY_${side^^}_BIN=\${!py_var}"
    echo "[side_by_side] $side: interpreter ${!py_var} (given), extra PYTHONPATH '${!site_var:-}'" >> "$log"
  else
    eval "PY_${side^^}_BIN=python3"
    eval "SITE_${side^^}=/tmp/site_$side"
    install_site "$side" ".whl/$side" "/tmp/site_$side" "$log" || return 1
  fi
}

env_report() {  # <log>
  local log=$1
  {
    echo "[side_by_side] $(date -u) repo $(git rev-parse --short HEAD 2>/dev/null || echo '?') device=$DEVICE size=$SIZE"
    [ "$GPU" = 1 ] && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
    [ -f .official/SOURCES.txt ] && sed 's/^/official: /' .official/SOURCES.txt
  } >> "$log" 2>&1
}

side_versions() {  # <side> <log>
  local side=$1 log=$2
  "run_$side" -c "import sys, torch; print('$side', sys.version.split()[0], 'torch', torch.__version__,
  *[f'{m}=' + __import__(m).__version__ for m in ('diffusers', 'transformers', 'huggingface_hub')])" >> "$log" 2>&1 \
    || echo "[side_by_side] $side: version report failed" >> "$log"
}

weights() {  # <what> <log> <parts...>
  local what=$1 log=$2; shift 2
  local dev; dev=$([ "$GPU" = 1 ] && echo cuda || echo cpu)
  step "$what" "weights:$*" 300 "$log" run_ours benchmarks/gpu/make_weights.py --out "$WEIGHTS" --size "$SIZE" \
    --device "$dev" --parts "$@"
  cp "$WEIGHTS"/*.json "$WORK/weights_info/" 2>/dev/null || true
}

# ------------------------------------------------------------------------------------------------ Live2Diff
ours_l2d_supports() { grep -q -- "$1" "$WORK/live2diff/ours_help.txt"; }

do_live2diff() {
  local w="$WORK/live2diff" setup="$OUT/live2diff-setup.log" ours="$OUT/live2diff-ours.log" off="$OUT/live2diff-official.log"
  rm -rf "$w"; mkdir -p "$w"; : > "$w/steps.tsv"
  env_report "$setup"
  setup_side ours "$setup" && side_versions ours "$setup"
  setup_side l2d "$setup" && side_versions l2d "$setup"
  weights live2diff "$setup" l2d
  step live2diff "weights:midas" 150 "$setup" run_l2d benchmarks/gpu/make_weights.py --out "$WEIGHTS" --size "$SIZE" \
    --device "$([ "$GPU" = 1 ] && echo cuda || echo cpu)" --parts midas --official-dir .official/live2diff
  cp "$WEIGHTS"/*.json "$WORK/weights_info/" 2>/dev/null || true
  run_ours benchmarks/live2diff_stream.py --help > "$w/ours_help.txt" 2>&1
  local dev_args=(--size "$SIZE" --device "$DEVICE" --dtype "$DTYPE" --frames "$FRAMES" --skip "$SKIP")
  [ "$THREADS" != 0 ] && dev_args+=(--threads "$THREADS")
  local om fm i=0
  local -a ours_modes=($L2D_OURS_MODES) off_modes=($L2D_OFFICIAL_MODES)
  # interleave: ours[0], official[0], ours[1], official[1], ... (the first pair matters most)
  local n=$(( ${#ours_modes[@]} > ${#off_modes[@]} ? ${#ours_modes[@]} : ${#off_modes[@]} ))
  for ((i = 0; i < n; i++)); do
    om=${ours_modes[$i]:-}
    if [ -n "$om" ]; then
      local args=("${dev_args[@]}" --out "$w/results")
      if ours_l2d_supports "--acceleration"; then args+=(--acceleration "$om")
      elif [ "$om" != none ]; then echo "[side_by_side] ours: no --acceleration yet, $om runs as the default" >> "$ours"; fi
      if ours_l2d_supports "--json"; then args+=(--json "$w/ours_$om.json"); fi
      if ours_l2d_supports "--weights"; then args+=(--weights "$WEIGHTS"); fi  # the files the official side loads
      step live2diff "ours:$om" 240 "$ours" run_ours benchmarks/live2diff_stream.py "${args[@]}"
      if [ ! -f "$w/ours_$om.json" ]; then  # an older script: its own JSON in --out
        local f; f=$(ls -t "$w"/results/live2diff_stream-*.json 2>/dev/null | head -1)
        [ -n "$f" ] && mv "$f" "$w/ours_$om.json"
      fi
    fi
    fm=${off_modes[$i]:-}
    if [ -n "$fm" ]; then
      local cap=200; [ "$fm" = compile-hot ] && cap=400
      step live2diff "official:$fm" "$cap" "$off" run_l2d benchmarks/gpu/official_live2diff_speed.py \
        --official-dir .official/live2diff --weights "$WEIGHTS" --size "$SIZE" --device "$DEVICE" --dtype "$DTYPE" \
        --frames "$FRAMES" --skip "$SKIP" --acceleration "$fm" --threads "$THREADS" --json "$w/official_$fm.json"
    fi
  done
  run_ours benchmarks/gpu/merge.py --what live2diff --work "$WORK" --out "$OUT" --device "$DEVICE" --size "$SIZE" \
    2>&1 | tee -a "$setup"
}

# ------------------------------------------------------------------------------------------------ StreamingT2V
do_streaming_t2v() {
  local w="$WORK/streaming_t2v" setup="$OUT/streaming_t2v-setup.log" ours="$OUT/streaming_t2v-ours.log"
  local off="$OUT/streaming_t2v-official.log"
  rm -rf "$w"; mkdir -p "$w"; : > "$w/steps.tsv"
  env_report "$setup"
  setup_side ours "$setup" && side_versions ours "$setup"
  setup_side st2v "$setup" && side_versions st2v "$setup"
  weights streaming_t2v "$setup" st2v
  local common=(--weights "$WEIGHTS" --device "$DEVICE" --dtype "$DTYPE" --repeats "$REPEATS" --warmup "$WARMUP"
                --threads "$THREADS")
  step streaming_t2v "ours:eager+fused" 200 "$ours" run_ours benchmarks/gpu/ours_streaming_t2v_step.py "${common[@]}" \
    --json "$w/ours_st2v.json"
  step streaming_t2v "official" 200 "$off" run_st2v benchmarks/gpu/official_streaming_t2v_speed.py \
    --official-dir .official/streamingt2v "${common[@]}" --json "$w/official_st2v.json"
  # the refiner at 720p (ours): peak GPU memory of refining one 24-frame video to 1280x720 (2 steps; memory does
  # not depend on the number of steps), after one 2-step extension chunk at 256x256
  local rsize; rsize=$([ "$SIZE" = real ] && echo "1280 720" || echo "128 64")
  step streaming_t2v "ours:refiner" 200 "$ours" run_ours benchmarks/streaming_t2v_speed.py --size "$SIZE" \
    --device "$DEVICE" --dtype "$DTYPE" --frames 24 --steps 2 --refiner --refiner-steps 2 --refiner-size $rsize \
    --out "$w/results" --json "$OUT/streaming_t2v_refiner-$([ "$GPU" = 1 ] && echo cuda || echo cpu)-$(date -u +%F).json"
  if [ "$ST2V_COMPILE" = 1 ]; then
    step streaming_t2v "ours:compiled" 400 "$ours" run_ours benchmarks/gpu/ours_streaming_t2v_step.py "${common[@]}" \
      --skip-eager --compile --json "$w/ours_st2v_compile.json"
  fi
  run_ours benchmarks/gpu/merge.py --what streaming_t2v --work "$WORK" --out "$OUT" --device "$DEVICE" --size "$SIZE" \
    2>&1 | tee -a "$setup"
}

case "$WHAT" in
  live2diff) do_live2diff ;;
  streaming_t2v) do_streaming_t2v ;;
  all) do_live2diff; START=$(date +%s); do_streaming_t2v ;;
esac
echo "[side_by_side] done in $(( $(date +%s) - T0_ALL ))s; files in $OUT:"
ls -la "$OUT"
