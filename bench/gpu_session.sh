#!/usr/bin/env bash
# Everything a short GPU lease should run, most valuable first, each part under its own time limit
# (about 10 minutes in all on an H100): install, the tests on the GPU (native kernels, CUDA graphs,
# memory against the budget), the static model's modelled vs measured time per kernel, generation throughput
# of the real-size presets against the bandwidth roof, the microbenchmarks with their peers, and the report.
# Results go to $OUT (default bench/results).
#   bash bench/gpu_session.sh            # or: OUT=/some/dir bash bench/gpu_session.sh
set -u
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -m pip install -q --no-build-isolation --no-deps -e . || exit 1

timeout 240 python3 -m pytest -q -x tests/test_decode_graph.py tests/test_budget.py tests/test_triton_model.py \
    tests/kernels --ignore=tests/kernels/test_compile_targets.py 2>&1 | tail -25  # compiling for 4 targets: CPU work

# The static model beside the measured time per kernel (its calibration), then the model alone for both presets.
timeout 300 python3 bench/static_vs_measured.py --models gpt-oss-20b --batch 1 64 \
    --json "$OUT/static_vs_measured.json" 2>&1 | tail -60
timeout 180 gpt-oss-triton bench --static --batch 1 64 --json "$OUT/static_model.json" 2>&1 | grep -v "^_\|^aten"

for preset in gpt-oss-20b gpt-oss-120b; do
    timeout 150 gpt-oss-triton bench --model "$preset" --batch 1 8 64 --prompt-len 1024 --new-tokens 64 \
        --json "$OUT/generation_$preset.json"
done

timeout 200 python3 -m pytest bench -q -m "not large" --bench-results "$OUT" 2>&1 | tail -15
latest=$(ls -t "$OUT"/*.json 2>/dev/null | grep -v /generation_ | head -1)
[ -n "$latest" ] && python3 bench/report.py "$latest" --out "$OUT/report" 2>&1 | tail -5
