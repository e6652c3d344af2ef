"""Modelled and measured time per kernel of a decode step, side by side: the static model's calibration on a GPU.

For each preset and batch: the model (seeded random weights, full size) runs decode steps at `--context` cached
positions; torch.profiler measures every kernel's time per step (grouped by kernel name; torch's own kernels,
cuBLAS included, as one row); the static model (model/static_model.py) models the same step for this GPU, its
SM count and its *measured* copy bandwidth replacing the datasheet's, the other constants unchanged. The table
shows where the model's constants (issue rate, per-SM bandwidth share, launch floor) need calibrating.

    python bench/static_vs_measured.py [--models gpt-oss-20b] [--batch 1 64] [--context 1024] [--json out.json]
"""
import argparse
import collections
import dataclasses
import json
import os
import sys

import torch

from gpt_oss_triton.model import GptOss
from gpt_oss_triton.model.config import GptOssConfig
from gpt_oss_triton.model.roofline import measure_copy_bandwidth
from gpt_oss_triton.model.static_model import H100, model_step

STEPS = 5


def measured_kernels(model, batch: int, context: int) -> tuple[dict, float]:
    """{kernel name: seconds per step} over STEPS decode steps, and the step's wall time."""
    cache = model.new_cache(batch, context + STEPS + 8)
    cache.lengths.fill_(context)
    tokens = torch.zeros(batch, dtype=torch.long, device="cuda")
    active = torch.ones(batch, dtype=torch.int32, device="cuda")
    for _ in range(3):  # autotuning and warm-up
        model.decode_step(tokens, active, cache)
    cache.lengths.fill_(context)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(STEPS):
            model.decode_step(tokens, active, cache)
        torch.cuda.synchronize()
    per_kernel = collections.Counter()
    for event in prof.key_averages():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            name = event.key if event.key.startswith("_") else "torch ops (cuBLAS, copies, fills)"
            per_kernel[name] += event.self_device_time_total * 1e-6 / STEPS
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(STEPS):
        model.decode_step(tokens, active, cache)
    end.record()
    torch.cuda.synchronize()
    return dict(per_kernel), start.elapsed_time(end) * 1e-3 / STEPS


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["gpt-oss-20b"])
    p.add_argument("--batch", nargs="+", type=int, default=[1, 64])
    p.add_argument("--context", type=int, default=1024)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    props = torch.cuda.get_device_properties(0)
    bandwidth = measure_copy_bandwidth("cuda")
    device = dataclasses.replace(H100, name=props.name, sms=props.multi_processor_count, bandwidth=bandwidth,
                                 arch=props.major * 10 + props.minor)
    print(f"{props.name}: {props.multi_processor_count} SMs, measured copy bandwidth {bandwidth / 1e9:.0f} GB/s")
    results, cache = [], {}
    for name in args.models:
        model = GptOss.from_pretrained(name, backend="triton", device="cuda")
        for batch in args.batch:
            measured, wall = measured_kernels(model, batch, args.context)
            models, step, roof = model_step(GptOssConfig.preset(name), batch, args.context, device, cache,
                                            workers=os.cpu_count() or 1)
            modelled = collections.Counter()
            for m in models:
                key = m.name if m.name.startswith("_") else "torch ops (cuBLAS, copies, fills)"
                modelled[key] += m.time * m.count
            print(f"\n{name} batch {batch}: step modelled {step * 1e3:.3f} ms, measured {wall * 1e3:.3f} ms "
                  f"(kernels {sum(measured.values()) * 1e3:.3f} ms); roofline {roof * 1e3:.3f} ms")
            print(f"{'kernel':<40}{'modelled us':>12}{'measured us':>12}{'ratio':>8}")
            for key in sorted(set(modelled) | set(measured), key=lambda k: -measured.get(k, 0)):
                mod, mea = modelled.get(key, 0.0), measured.get(key, 0.0)
                print(f"{key[:39]:<40}{mod * 1e6:>12.1f}{mea * 1e6:>12.1f}"
                      f"{(mea / mod if mod else float('nan')):>8.2f}")
            results.append({"model": name, "batch": batch, "context": args.context, "device": props.name,
                            "bandwidth": bandwidth, "step_modelled_s": step, "step_measured_s": wall,
                            "roofline_s": roof, "modelled_s": dict(modelled), "measured_s": measured})
        del model
        torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
