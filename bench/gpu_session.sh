#!/usr/bin/env bash
# A first GPU run, within ~10 minutes of device time, most valuable first; every step under its own time limit,
# its output in its own log, a failure noted in steps.tsv and the next step run anyway:
#   1. the environment (device, driver, versions, commit) and the device's copy bandwidth
#   2. the CUDA-graph decode step of 20b (seeded random weights in memory) at batch 1/8/64, context 1024, timed
#      back to back with the sampler, a torch.profiler table per kernel, the autotuner's picks
#      (TRITON_PRINT_AUTOTUNING=1), the static model's optimistic/expected figures beside them
#   3. the same with each MoE / decode-attention tile config forced in turn
#   4. Hugging Face transformers on the same weights as the peer (decode, batch 1/8/64, context 1024)
# Limits add up to 570 s. The static model alone (`gpt-oss-triton bench --static`) needs no GPU: run it here.
# Everything lands in bench/results/<date>-<device>/ (or $OUT).
#   bash bench/gpu_session.sh            # on the GPU machine
#   bash bench/gpu_session.sh --dry-run  # on a CPU: the tiny preset at batch 1 in Triton's interpreter (minutes)
set -u
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
PY=${PYTHON:-python3}
device=$( (nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null || echo cpu) | head -1 | tr ' /' '__')
[ $DRY = 1 ] && device=cpu-dry-run
OUT=${OUT:-bench/results/$(date -u +%Y%m%d-%H%M)-$device}
mkdir -p "$OUT"
: > "$OUT/steps.tsv"

# step NAME SECONDS COMMAND...: run it under a time limit ($STEP_LIMIT, when set, overrides every limit), log to
# $OUT/NAME.log, note its exit status and time.
step() {
    local name=$1 limit=${STEP_LIMIT:-$2} t0 rc
    shift 2
    t0=$(date +%s)
    echo "== $name (limit ${limit}s)"
    timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    printf '%s\t%s\t%ss\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" >> "$OUT/steps.tsv"
    tail -n 25 "$OUT/$name.log"
    [ $rc = 0 ] || echo "!! $name failed (exit $rc; 124: over its limit); see $OUT/$name.log"
    return 0
}

if [ $DRY = 1 ]; then
    export TRITON_INTERPRET=1
    SVM=(--dry-run --batch 1)
    HF_K="test_decode and tiny and transformers and 1024"
else
    step install 60 $PY -m pip install --no-build-isolation --no-deps -e .
    SVM=(--models gpt-oss-20b --batch 1 8 64 --context 1024)
    HF_K="test_decode and gpt-oss-20b and transformers and 1024"
fi

step environment 30 $PY -c "
import json, torch
from gpt_oss_triton.model.environment import environment
name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu'
print(json.dumps(environment(name), indent=1))"
cp "$OUT/environment.log" "$OUT/environment.json" 2>/dev/null
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1

step bandwidth 30 $PY -c "
import torch
from gpt_oss_triton.model.roofline import measure_copy_bandwidth
dev = 'cuda' if torch.cuda.is_available() else 'cpu'
print(f'copy bandwidth (read + written): {measure_copy_bandwidth(dev, 1 << 30 if dev == \"cuda\" else 1 << 24) / 1e9:.1f} GB/s')"

TRITON_PRINT_AUTOTUNING=1 step graph_step 210 $PY bench/static_vs_measured.py "${SVM[@]}" \
    --json "$OUT/static_vs_measured.json"
TRITON_PRINT_AUTOTUNING=1 step forced_configs 120 $PY bench/static_vs_measured.py "${SVM[@]}" --force \
    --no-model --json "$OUT/forced_configs.json"
step peer_transformers 120 $PY -m pytest bench/bench_e2e.py -q -m "large or not large" -k "$HF_K" \
    --bench-results "$OUT"

echo "== results in $OUT"
cat "$OUT/steps.tsv"
