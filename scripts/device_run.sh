#!/usr/bin/env bash
# On the lent GPU machine (device tool, carry [".whl"]): install the carried wheels, then run one
# job, writing its results and log under $OUT. Jobs:
#   tests   the GPU tests (tests/test_gpu.py), about 1 min
#   bench   scripts/benchmark.py at 1080p 4:3 on full-size random weights (no compile), ~5 min
#   compile the same entry with GEN4_COMPILE only (minutes of compiling)
# Usage there: bash scripts/device_run.sh JOB [benchmark.py options...]
set -uo pipefail
job=${1:?job: tests, bench or compile}
shift
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
nproc | tee -a "$OUT/gpu.txt"
case $job in
tests)
    python3 -m pytest -q -m "gpu or real_weights" tests/test_gpu.py 2>&1 | tee "$OUT/tests.log"
    ;;
bench)
    python3 scripts/benchmark.py --entries '1080p 4:3' --no-compile --out "$OUT" "$@" 2>&1 | tee "$OUT/bench.log"
    ;;
compile)
    python3 scripts/benchmark.py --entries '1080p 4:3' --no-sizes --no-injection --no-turbo --no-graphs \
        --no-server --out "$OUT/compile" "$@" 2>&1 | tee "$OUT/compile.log"
    ;;
*)
    echo "unknown job $job (tests, bench or compile)" >&2
    exit 2
    ;;
esac
