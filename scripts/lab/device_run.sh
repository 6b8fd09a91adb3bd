#!/usr/bin/env bash
# On the lent GPU machine (device tool, carry [".whl"]): install the carried wheels, then run one
# job, writing its results and log under $OUT. Jobs:
#   tests   the GPU tests (tests/engine/test_gpu.py), about 1 min
#   bench   scripts/benchmark.py at 1080p 4:3 on full-size random weights (no compile), ~5 min
#   compile the same entry with GEN4_COMPILE only (minutes of compiling)
#   server  time to READY and the server's overhead alone (output as a data URI, then uploaded
#           with --upload-url to a receiver on 127.0.0.1), after removing the device's packages
#           that the project's image lacks (scikit-learn, torchvision, ...: libraries import them
#           when present), then `import predict` once more without peft, to show its share; and
#           a server with the idle warm-up (GEN4_WARMUP): its first request once warmed
#   all     tests, then bench, in one call (the machine is let go 30 s after a call: one call
#           spares a second start and the second install)
# Usage there: bash scripts/lab/device_run.sh JOB [benchmark.py options...]
set -uo pipefail
job=${1:?job: tests, bench, server, compile or all}
shift
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
# Bytecode, as the image `cog build` makes has it for its requirements (pip compiles them at
# install): without it every process compiles diffusers, cog and this project from source again
# where PYTHONDONTWRITEBYTECODE is set, which would count in setup and time-to-READY. On the
# project's CPU machine that took `import predict` from 6.5-7.0 s to 7.8-9.2 s (3 runs each).
python3 -m compileall -q -j 0 /tmp/site model harness scripts tests predict.py >/dev/null || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
nproc | tee -a "$OUT/gpu.txt"
import_time() { # $1: a name for the log
    { time GEN4_PREFETCH=0 python3 -X importtime -c "import predict" 2>"$OUT/importtime-$1.log"; } 2>&1 |
        sed "1i $1" | tee -a "$OUT/import_time.txt"
}
gpu_tests() {
    python3 -m pytest -q -m "gpu or real_weights" tests/engine/test_gpu.py 2>&1 | tee "$OUT/tests.log"
}
case $job in
tests)
    gpu_tests
    ;;
bench | all)
    [[ $job == all ]] && gpu_tests
    # Where a server worker's `import predict` goes on this host (11.7 s in an earlier server log):
    # twice (the first may read files not yet in the page cache). No prefetch: no weights named.
    for run in first second; do import_time $run; done
    python3 scripts/benchmark.py --entries '1080p 4:3' --no-compile --out "$OUT" "$@" 2>&1 | tee "$OUT/bench.log"
    ;;
server)
    # Not in requirements.txt's closure (the project's venv has none of them).
    python3 -m pip uninstall -q -y scikit-learn torchvision pandas scipy pyarrow 2>&1 | tail -2
    for run in first second; do import_time $run; done
    python3 scripts/benchmark.py --entries '1080p 4:3' --no-sizes --no-injection --no-turbo --no-graphs --no-compile \
        --no-reference-decode --out "$OUT/server" "$@" 2>&1 | tee "$OUT/server.log"
    python3 -m pip uninstall -q -y peft 2>&1 | tail -2
    import_time without-peft
    ;;
compile)
    python3 scripts/benchmark.py --entries '1080p 4:3' --no-sizes --no-injection --no-turbo --no-graphs \
        --no-server --out "$OUT/compile" "$@" 2>&1 | tee "$OUT/compile.log"
    ;;
*)
    echo "unknown job $job (tests, bench, server, compile or all)" >&2
    exit 2
    ;;
esac
