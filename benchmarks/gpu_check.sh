#!/usr/bin/env bash
# One go on a GPU machine: build dropkit against the CUDA torch already installed there,
# run the CUDA tests (the Triton backend, compile, CUDA graphs, the fused op, the reference
# on CUDA, WeightDrop under cuDNN), an NCCL `--ddp` run, then benchmarks/bench_gpu.py.
#
#   bash benchmarks/gpu_check.sh            # from the repository root
#
# Nothing is downloaded (the GPU machines here reach no registry): it uses the python3
# that holds torch and triton. Logs go to $OUT (default ./gpu_logs), at most 8 files:
# env.txt, build.log, tests_cuda.log, tests_cpu.log, ddp.log, bench_gpu.log, summary.txt.
# Every step has its own time limit (490 s in all, so the script ends within ~8 minutes at
# worst; about 4-5 expected); a failing step is recorded in summary.txt and the next one
# still runs.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_logs}"
mkdir -p "$OUT"
PYTHON="${PYTHON:-python3}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# The interpreter must stay off for the compiled kernels (the interpreter tests set it
# for themselves only).
unset TRITON_INTERPRET
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
START=$SECONDS

step() {  # step NAME LIMIT_SECONDS LOG COMMAND...
    local name=$1 limit=$2 log=$3
    shift 3
    local begin=$SECONDS
    timeout --signal=TERM --kill-after=10 "$limit" "$@" >>"$log" 2>&1
    local rc=$?
    local verdict=ok
    [ "$rc" -eq 124 ] && verdict="TIMED OUT after ${limit}s"
    [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && verdict="FAILED (exit $rc)"
    echo "$name: $verdict in $((SECONDS - begin))s (log $(basename "$log"))" | tee -a "$SUMMARY"
}

{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 || true
    "$PYTHON" - <<'EOF'
import sys, torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| available", torch.cuda.is_available())
try:
    import triton
    print("triton", triton.__version__)
except ImportError as error:
    print("triton missing:", error)
for name in ("pytest", "hypothesis", "typer", "rich", "sklearn", "optuna", "platformdirs"):
    try:
        __import__(name)
        print("have", name)
    except ImportError:
        print("MISSING", name)
EOF
} >"$OUT/env.txt" 2>&1

# The native CPU kernel for this machine's Python (the tree carries no build products).
step build 45 "$OUT/build.log" "$PYTHON" setup.py -q build_ext --inplace

# The CUDA tests first, serially (one GPU). -rs lists why anything skipped.
step tests_cuda 140 "$OUT/tests_cuda.log" "$PYTHON" -m pytest -q -rs -p no:cacheprovider \
    tests/kernels/test_triton_cuda.py \
    tests/test_distributed.py::test_fork_steers_and_restores_the_cuda_generator \
    tests/test_distributed.py::test_checkpoint_recomputes_the_same_masks_on_cuda

# The interpreter tests and the functional/compile tests, on a machine with CUDA present
# (dispatch, lazy import and TRITON_INTERPRET isolation next to compiled kernels).
XDIST=""
"$PYTHON" -c "import xdist" 2>/dev/null && XDIST="-n 4"
# shellcheck disable=SC2086
step tests_cpu 90 "$OUT/tests_cpu.log" "$PYTHON" -m pytest -q -rs -p no:cacheprovider $XDIST \
    tests/kernels/test_triton_interpreter.py tests/kernels/test_triton_compile.py \
    tests/kernels/test_native_kernel.py \
    tests/test_functional.py

# NCCL: one rank per GPU, so --ddp 1 on a one-GPU machine takes the NCCL branch.
step ddp_nccl 75 "$OUT/ddp.log" "$PYTHON" -m dropkit lab run breast-cancer --ddp 1 \
    --rates 0.5 --epochs 1 --seeds 0 --mc-samples 2 --batch-size 64 --no-progress \
    --store /tmp/dropkit_gpu_check/lab.sqlite

step bench_gpu 140 "$OUT/bench_gpu.log" "$PYTHON" benchmarks/bench_gpu.py

echo "total: $((SECONDS - START))s" | tee -a "$SUMMARY"
