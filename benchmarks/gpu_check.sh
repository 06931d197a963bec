#!/usr/bin/env bash
# Run ON the lent GPU machine, as one call (docs/performance.md, "On a GPU"), from the repository root:
#   bash benchmarks/gpu_check.sh            (carry .whl, made here by benchmarks/gpu_wheels.sh)
# 1. benchmarks/gpu_check.py: CPU-vs-device agreement of alignment (through the writing thread), merges and
#    statistics, and unit matching at a 7B FFN's size on the device;
# 2. benchmarks/bench_scale.py: a Mistral-7B-shaped pair of LAYERS layers (default 4) built there, aligned with
#    --device cuda (sketch and sparse solvers), wall time against the read time; then the same pair with the
#    sparse solver on lanes: two on one GPU (--device cuda,cuda: host solves overlap device products), or one
#    on each GPU when there are several (--device auto);
# 3. benchmarks/bench_refine.py: refine's layered mode on R_LAYERS (2) Mistral-7B-shaped layers: s / step, peak.
# Results go to $OUT (the device tool's folder; gpu_out/ elsewhere). On a machine without a GPU:
#   DEVICE=cpu UNITS=2048 WIDTH=1024 LAYERS=1 R_HIDDEN=256 R_FFN=688 R_VOCAB=2000 PYTHON=.venv/bin/python \
#       bash benchmarks/gpu_check.sh
set -uo pipefail
OUT=${OUT:-gpu_out}
DEVICE=${DEVICE:-cuda}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
if [ -d .whl ]; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true) > "$OUT/machine.txt" 2>&1
"$PYTHON" -c "import torch, transformers; print(torch.__version__, transformers.__version__)" >> "$OUT/machine.txt"
"$PYTHON" benchmarks/gpu_check.py --device "$DEVICE" --units "${UNITS:-14336}" --width "${WIDTH:-12288}" \
    --out "$OUT/gpu_check.json" > "$OUT/gpu_check.log" 2>&1
echo "gpu_check: exit $?"
"$PYTHON" benchmarks/bench_scale.py --layers "${LAYERS:-4}" --solvers sketch,sparse --no-merge \
    --align-dtype float32 --device "$DEVICE" --workdir "${WORK:-/tmp/mergeflow-scale}" --keep \
    > "$OUT/bench_scale.log" 2>&1
echo "bench_scale: exit $?"
LANES="$DEVICE,$DEVICE"  # two lanes on one GPU; with several GPUs, one lane on each (auto)
if [ "$DEVICE" = cuda ] && [ "$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())')" -gt 1 ]; then
    LANES=auto
fi
"$PYTHON" benchmarks/bench_scale.py --layers "${LAYERS:-4}" --solvers sparse --no-merge --align-dtype float32 \
    --device "$LANES" --workdir "${WORK:-/tmp/mergeflow-scale}" > "$OUT/bench_lanes.log" 2>&1
echo "bench_scale on lanes ($LANES): exit $?"
"$PYTHON" benchmarks/bench_refine.py --hidden "${R_HIDDEN:-4096}" --ffn "${R_FFN:-14336}" --layers "${R_LAYERS:-2}" \
    --vocab "${R_VOCAB:-32000}" --steps 3 --modes layered --device "$DEVICE" > "$OUT/bench_refine.log" 2>&1
echo "bench_refine: exit $?"
tail -n 30 "$OUT/gpu_check.log" "$OUT/bench_scale.log" "$OUT/bench_lanes.log" "$OUT/bench_refine.log"
