#!/usr/bin/env bash
# The GPU checks of qlora-tui in one prepared command, for a lent CUDA machine that cannot reach a package registry.
#
#   bash bench/gpu_suite.sh fetch          here, on a machine with the registry: wheels the GPU box lacks -> .whl/
#   bash bench/gpu_suite.sh all            there: install .whl/ and the project, run the test suite, then the bench
#   bash bench/gpu_suite.sh suite          there: the test suite only (about 5 minutes with 8 workers)
#   bash bench/gpu_suite.sh bench          there: the GPU bench only (bench/bench_gpu_train.py, about 8 minutes)
#
# Outputs go to $OUT (the device tool's folder that comes back; ./gpu-out when unset): pytest.log, junit.xml,
# bench.log, bench.json, env.txt. Budgets (seconds) can be changed: SUITE_S (default 280 in "all", 540 alone),
# BENCH_S (what is left of ALL_S=570 in "all", 570 alone); BENCH_ARGS passes flags to the bench.
# On the device tool: carry [".whl"], timeout_s 600, command `bash bench/gpu_suite.sh all`.
# The box (KINDS.md, nvidia-h200) has Python 3.12 with CUDA torch, transformers, accelerate, pytest, xdist, pyarrow;
# the wheels below are the rest, at the versions this project was tested with on the CPU.
set -uo pipefail
cd "$(dirname "$0")/.."
MODE="${1:-all}"
WHEELS=(
  trl==1.16.0 bitsandbytes==0.50.2 datasets==5.2.0 peft==0.21.2 transformers==5.24.0 liger-kernel==0.8.5
  dill==0.4.1 multiprocess==0.70.19 textual==8.2.8 rich==15.0.0 markdown-it-py==4.3.0 mdurl==0.1.2
  mdit-py-plugins==0.7.0 linkify-it-py==2.2.0 pygments==2.21.0 platformdirs==4.14.9
  tomli-w==1.2.0 pytest==8.4.2 pluggy==1.7.0 iniconfig==2.3.1 pytest-asyncio==1.5.0 pytest-textual-snapshot==1.1.0
  syrupy==4.8.0 pexpect==4.9.0 ptyprocess==0.7.0 pyte==0.8.2 wcwidth==0.9.4
)

if [ "$MODE" = fetch ]; then
  mkdir -p .whl
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || grep -qx '/.whl/' .gitignore || echo '/.whl/' >> .git/info/exclude
  platforms=()
  for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
           manylinux2014_x86_64 manylinux1_x86_64 any; do platforms+=(--platform "$p"); done
  wanted=("${WHEELS[@]}")
  # SLIM=1 leaves transformers out (13.5 MB) and uses the box's own (5.17 when last read) if the tree is too big
  [ "${SLIM:-0}" = 1 ] && wanted=("${WHEELS[@]/transformers==*/}") && rm -f .whl/transformers-*.whl
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl ${wanted[@]} || exit 1
  du -sh .whl
  echo "the device tool carries at most 64 MiB (working tree included); carry .whl"
  exit 0
fi

OUT="${OUT:-$PWD/gpu-out}"
mkdir -p "$OUT"
started=$SECONDS
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "installing .whl/ failed: run 'bash bench/gpu_suite.sh fetch' on a machine with the registry"; exit 1; }
export PYTHONPATH=/tmp/site PATH="/tmp/site/bin:$PATH"
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/qlora . \
  || { echo "installing the project failed"; exit 1; }
export PYTHONPATH="/tmp/qlora:/tmp/site" PATH="/tmp/qlora/bin:$PATH"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import sys, torch, transformers, trl, peft, bitsandbytes, datasets, qlora_tui.runner.train as t
print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0))
print('transformers', transformers.__version__, 'trl', trl.__version__, 'peft', peft.__version__,
      'bitsandbytes', bitsandbytes.__version__, 'datasets', datasets.__version__, 'qlora_tui', t.__file__)"
  python3 -c "import liger_kernel.transformers; print('liger-kernel imports')" 2>&1 | tail -1
  echo "setup took $((SECONDS - started)) s"
} 2>&1 | tee "$OUT/env.txt"

ALL_S=570
if [ "$MODE" = suite ] || [ "$MODE" = all ]; then
  default_suite=$([ "$MODE" = all ] && echo 280 || echo 540)
  budget="${SUITE_S:-$default_suite}"
  timeout --signal=INT --kill-after=15 "$budget" python3 -m pytest -q -p no:cacheprovider -n 8 -ra \
    --junitxml "$OUT/junit.xml" tests 2>&1 | tee "$OUT/pytest.log" | tail -40
  echo "suite: exit ${PIPESTATUS[0]} after $((SECONDS - started)) s (124 or 130: stopped at its ${budget} s budget)"
fi
if [ "$MODE" = bench ] || [ "$MODE" = all ]; then
  left=$((ALL_S - (SECONDS - started)))
  budget="${BENCH_S:-$left}"
  # shellcheck disable=SC2086
  timeout --signal=INT --kill-after=15 "$budget" python3 bench/bench_gpu_train.py --work /tmp/bench \
    --json "$OUT/bench.json" --budget-s "$budget" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log"
  echo "bench: exit ${PIPESTATUS[0]} after $((SECONDS - started)) s"
fi
