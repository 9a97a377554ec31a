#!/usr/bin/env bash
# The GPU check of qlora-tui, sized to one loan of a device machine: about 15 minutes of device time with its start,
# one command of at most 10 minutes, 64 MiB carried in all (working tree included), no registry there.
#
#   bash bench/gpu_suite.sh fetch    here: the wheels the box lacks -> .whl/ (bench/gpu_wheels.py: the closure of
#                                    what the project imports, less the box's packages); tree + wheels under 60 MiB
#   bash bench/gpu_suite.sh check    here: that closure in a bare venv (torch + stand-ins for the box), each import
#   bash bench/gpu_suite.sh all      there: size, install, verify; the side-by-side first (8B, fixed steps, a few
#                                    minutes); the suite second (the cuda-marked tests, then the rest), to ALL_S
#   bash bench/gpu_suite.sh bench    there: the side-by-side alone;  bash bench/gpu_suite.sh suite: the suite alone
#   ... all --allow-cpu --size tiny  the dry run, here on this Python: the same steps on a tiny model, no CUDA
#                                    (tests/bench/test_gpu_script.py runs it, so the script cannot rot unseen)
#
# On the device tool: carry [".whl"], timeout_s 600, command `bash bench/gpu_suite.sh all`.
# What comes back, in $OUT (./gpu-out when unset): figures.jsonl (one JSON line per figure, appended the moment it
# is measured: a stop at any limit keeps everything before it), env.txt, bench.log, pytest.log, junit-cuda.xml,
# junit.xml. Budgets in seconds: ALL_S (560: the command's whole run), BENCH_S (380 in "all"), CUDA_S (120, the
# cuda-marked tests); BENCH_ARGS, CUDA_TESTS and REST_TESTS change what runs; WORK (/tmp/qlora-gpu) holds the
# installed wheels, the random model and the runs.
set -uo pipefail
cd "$(dirname "$0")/.."
MODE="${1:-all}"
shift || true
ALLOW_CPU=0
SIZE=8b
while [ $# -gt 0 ]; do
  case "$1" in
    --allow-cpu) ALLOW_CPU=1 ;;
    --size) SIZE="$2"; shift ;;
    *) echo "gpu_suite.sh: unknown option $1 (allowed: --allow-cpu, --size 8b|1b|tiny)"; exit 2 ;;
  esac
  shift
done
PY="${PYTHON:-python3}"
case "$MODE" in
  fetch) exec "$PY" bench/gpu_wheels.py fetch ;;
  check) exec "$PY" bench/gpu_wheels.py check ;;
  all|bench|suite) ;;
  *) echo "gpu_suite.sh: unknown mode $MODE (fetch, check, all, bench, suite)"; exit 2 ;;
esac

OUT="${OUT:-$PWD/gpu-out}"
WORK="${WORK:-/tmp/qlora-gpu}"
mkdir -p "$OUT" "$WORK"
FIG="$OUT/figures.jsonl"
ALL_S="${ALL_S:-560}"
started=$SECONDS
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 QLORA_TUI_FIGURES="$FIG"
left() { echo $((ALL_S - (SECONDS - started))); }

"$PY" bench/gpu_box.py size --jsonl "$FIG"  # what was carried, as the device tool counts it
"$PY" bench/gpu_box.py install --site "$WORK/site" --unsloth-site "$WORK/site-unsloth" --project "$WORK/qlora" \
  --jsonl "$FIG" || exit 1
export PYTHONPATH="$WORK/qlora:$WORK/site:$PWD/bench${PYTHONPATH:+:$PYTHONPATH}" PATH="$WORK/site/bin:$PATH"
export UNSLOTH_SITE="$WORK/site-unsloth"
GPU=0
if [ "$ALLOW_CPU" = 0 ]; then
  GPU=1
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || { echo "torch sees no CUDA GPU (use --allow-cpu --size tiny for the dry run)"; exit 1; }
fi
{
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$PY" -c "import json, sys, time, torch
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
record = {'what': 'env', 'python': sys.version.split()[0], 'torch': torch.__version__, 'cuda': torch.version.cuda,
          'gpu': gpu, 'gpu_memory_gib': round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if gpu
          else None}
open('$FIG', 'a').write(json.dumps({'t': round(time.time(), 1), **record}) + '\n')
print(record)"
} 2>&1 | tee "$OUT/env.txt"
"$PY" bench/gpu_box.py verify --jsonl "$FIG" $([ "$GPU" = 1 ] && echo --gpu) | tee -a "$OUT/env.txt"
echo "setup took $((SECONDS - started)) s"

if [ "$MODE" = bench ] || [ "$MODE" = all ]; then
  budget="${BENCH_S:-$([ "$MODE" = all ] && echo 380 || left)}"
  # shellcheck disable=SC2086
  timeout --signal=INT --kill-after=20 "$budget" "$PY" bench/bench_gpu_train.py --size "$SIZE" \
    $([ "$MODE" = all ] && echo --skip-7b) \
    --budget-s $((budget - 20)) --work "$WORK/bench" --jsonl "$FIG" $([ "$ALLOW_CPU" = 1 ] && echo --allow-cpu) \
    ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log" | grep -E "^FIGURE|Error|error" | cut -c1-400
  echo "bench: exit ${PIPESTATUS[0]} after $((SECONDS - started)) s (124: stopped at its ${budget} s budget)"
fi

if [ "$MODE" = suite ] || [ "$MODE" = all ]; then
  xdist=$("$PY" -c "import xdist" 2>/dev/null && echo "-n 8" || echo "")
  budget=$(( $(left) < ${CUDA_S:-120} ? $(left) : ${CUDA_S:-120} ))
  # shellcheck disable=SC2086
  QLORA_TUI_SUITE=cuda timeout --signal=INT --kill-after=15 "$budget" "$PY" -m pytest -q -p no:cacheprovider \
    -p pytest_jsonl -m cuda -ra --junitxml "$OUT/junit-cuda.xml" ${CUDA_TESTS:-tests} 2>&1 | tee "$OUT/pytest.log" \
    | tail -15
  echo "suite (cuda-marked): exit ${PIPESTATUS[0]} after $((SECONDS - started)) s"
  budget=$(left)
  if [ "$budget" -gt 20 ]; then
    # shellcheck disable=SC2086
    QLORA_TUI_SUITE=rest timeout --signal=INT --kill-after=15 "$budget" "$PY" -m pytest -q -p no:cacheprovider \
      -p pytest_jsonl -m "not cuda" $xdist -ra --junitxml "$OUT/junit.xml" ${REST_TESTS:-tests} 2>&1 \
      | tee -a "$OUT/pytest.log" | tail -25
    echo "suite (the rest): exit ${PIPESTATUS[0]} after $((SECONDS - started)) s (124 or 130: stopped at ALL_S)"
  else
    echo "suite (the rest): skipped, $budget s left of ALL_S=$ALL_S"
  fi
fi
echo "done after $((SECONDS - started)) s; figures in $FIG"
