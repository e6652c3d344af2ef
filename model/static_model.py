"""A static performance model of the decode step, computed from the compiled machine code (no GPU needed).

1. Record the launches of one decode step (the model's `decode_step` and the engine's sampler) at the real
   sizes, on meta tensors (kernels/launch_plan.py), as the modelled GPU would run them.
2. Compile every Triton launch for sm_90 with the runtime's specialisation and read its SASS (kernels/sass.py):
   registers, spills, shared memory, the tensor-core instruction, the main loop's instructions.
3. Model each launch as  t = max(bytes / bandwidth, warp-instructions / issue rate, launch floor)  with
       bytes          what the kernel's @traffic declaration says it moves (the touched experts under uniform
                      routing; the KV cache at `context` positions), or each tensor argument once;
       bandwidth      the device's DRAM bandwidth, scaled by min(1, SMs used * PER_SM_SHARE / SMs) for grids that
                      cannot occupy the GPU;
       instructions   main-loop SASS instructions x warps x loop trips (from the traffic declaration), plus for
                      every warp of every program the instructions before the loop and the fewest after it to
                      an exit (a loop-less kernel: all its instructions); the extra epilogue of the programs
                      that finish a split reduction (kernels/arrival.py) is not charged;
       issue rate     4 warp-instructions per clock per SM (one per SM sub-partition) over the SMs the grid uses;
   a torch op (cuBLAS GEMM, copy, fill) as max(bytes / bandwidth, floor) per kernel it launches. An autotuned
   launch is modelled with its fastest config (the autotuner picks by measurement).
4. Sum the step; modelled tok/s = batch / step time; the roofline is model/roofline.decode_bytes / bandwidth.

Every number comes from the code except the device constants below, each with its source. The model ignores
overlap between kernels and L2 reuse across launches; it treats every main-loop trip alike.

    python -m gpt_oss_triton.model.static_model [--models gpt-oss-20b gpt-oss-120b] [--batch 1 64] [--context 1024]
"""
import argparse
import dataclasses
import json
import math
import os
import sys

import torch

from ..kernels import launch_plan
from .config import PRESETS, GptOssConfig
from .roofline import decode_bytes


@dataclasses.dataclass(frozen=True)
class Device:
    """name; sms; bandwidth (B/s, achievable DRAM); clock (Hz); launch_floor (s); arch (compute capability x10)."""
    name: str
    sms: int
    bandwidth: float
    clock: float
    launch_floor: float
    arch: int = 90


# H100 SXM5: 132 SMs and 3.35 TB/s HBM3 peak (NVIDIA H100 datasheet). Bandwidth 3.0 TB/s: the copy roofline
# ../shared/perf-notes.md takes as achievable (~90 % of peak). Clock 1.755 GHz: the sustained clock the issue's
# estimate used (boost is 1.98 GHz; memory-bound decode need not hold it). Launch floor 1.6 us: a CUDA-graph
# kernel node costs ~0.6 us (launch probe, ahrefs/ocannl#488) and a kernel at least one dependent DRAM round trip
# in and one out (~0.5 us each at ~600-900 cycles of HBM latency).
H100 = Device("H100 SXM", sms=132, bandwidth=3.0e12, clock=1.755e9, launch_floor=1.6e-6)
# H200: the same GH100 die (132 SMs) with 4.8 TB/s HBM3e (NVIDIA H200 datasheet); 90 % achievable, as for H100.
H200 = Device("H200", sms=132, bandwidth=0.9 * 4.8e12, clock=1.755e9, launch_floor=1.6e-6)
DEVICES = {"h100": H100, "h200": H200}
ISSUE_PER_SM_CLOCK = 4  # warp-instructions: 4 SM sub-partitions, one warp scheduler each (Volta..Hopper)
PER_SM_SHARE = 3.0  # an SM streams at most 3x its even share of DRAM bandwidth (assumed; calibrated on a GPU)


@dataclasses.dataclass
class LaunchModel:
    """`count` identical ops of a step, each launching `kernels` kernels, modelled (time: per op)."""
    name: str
    count: int
    kernels: int = 1
    grid: tuple = ()
    config: str = ""
    registers: int = 0
    spills: int = 0
    shared: int = 0
    mma: str = ""
    loop_per_weight: float = float("nan")   # main-loop warp-instructions per weight streamed
    loop_per_byte: float = float("nan")     # ... per byte moved (kernels that stream no weights)
    bytes: float = 0.0
    instructions: float = 0.0
    t_mem: float = 0.0
    t_issue: float = 0.0
    time: float = 0.0                       # per op, seconds

    @property
    def bound(self) -> str:
        return max((self.t_mem, "memory"), (self.t_issue, "issue"), (1e-30, "floor"))[1] \
            if max(self.t_mem, self.t_issue) * (1 + 1e-9) >= self.time else "floor"


def step_launches(config: GptOssConfig, batch: int, context: int, sms: int) -> list:
    """The launches of one steady decode step of `batch` rows as the engine runs it: the DecodeGraph's step
    (the rows' tokens gathered, the model's decode_step, the in-graph sampler, the tokens written back)."""
    from .runtime.decode_graph import DecodeGraph
    from .runtime.sampling import SamplingParams, SlotSampler
    from .triton_model import TritonGptOss

    with torch.device("meta"):
        model = TritonGptOss(config, device="meta")
        cache = model.new_cache(batch, context + 2)
        sampler = SlotSampler(batch, "meta")
        for b in range(batch):
            sampler.assign(b, SamplingParams(), seed=b)
        decoder = DecodeGraph(model, cache, sampler, capture=False)
        steps = []
        for _ in range(2):  # the first step builds the RoPE table and writes the bucket's buffers: model the second
            with launch_plan.record(sms) as launches:
                decoder(list(range(batch)))
            steps.append(launches)
    return steps[-1]


def prefill_launches(config: GptOssConfig, lengths: tuple[int, ...], sms: int = H100.sms) -> list:
    """The launches of one packed prefill step of prompts of `lengths` tokens (the engine's forward_packed)."""
    from .triton_model import TritonGptOss

    with torch.device("meta"):
        model = TritonGptOss(config, device="meta")
        cache = model.new_cache(len(lengths), max(lengths) + 1)
        model.rope_tables()
        with launch_plan.record(sms) as launches:
            model.forward_packed(torch.zeros(sum(lengths), dtype=torch.long), list(lengths), cache)
    return launches


def distinct_launches(launches: list) -> list:
    """The Triton launches of a list that compile differently (kernel, specialisation and options)."""
    seen, out = set(), []
    for launch in launches:
        if not isinstance(launch, launch_plan.TritonLaunch):
            continue
        for constexprs, options, _ in launch.candidates():
            key = (launch.name, repr(launch_plan.specialize(launch, constexprs)), repr(sorted(options.items())))
            if key not in seen:
                seen.add(key)
                out.append((launch, constexprs, options))
    return out


def model_step(config: GptOssConfig, batch: int, context: int, device: Device = H100, cache: dict | None = None,
               workers: int = 1, progress=None):
    """(launch models, step seconds, roofline seconds) of one decode step; compiles in `workers` processes,
    counting the kernels compiled on `progress` (a text stream) if given."""
    cache = {} if cache is None else cache
    env = {"context": context}
    launches = step_launches(config, batch, context, device.sms)
    jobs = [(l, c, o) for l, c, o in distinct_launches(launches) if _key(l, c, o, device) not in cache]
    for job, compiled in zip(jobs, compile_all(jobs, device.arch, workers, progress)):
        cache[_key(*job, device)] = compiled
    models = []
    for launch in launches:
        if isinstance(launch, launch_plan.TorchLaunch):
            t = max(launch.bytes / device.bandwidth, device.launch_floor)
            models.append(LaunchModel(launch.op, 1, kernels=launch.count, bytes=launch.bytes,
                                      t_mem=launch.bytes / device.bandwidth,
                                      time=t + (launch.count - 1) * device.launch_floor))
            continue
        best = None
        for constexprs, options, grid in launch.candidates():
            m = _model_triton(cache[_key(launch, constexprs, options, device)], launch, constexprs, options, grid,
                              env, device)
            best = m if best is None or m.time < best.time else best
        models.append(best)
    rows = decode_bytes(config, batch, context).total
    return _merge(models), sum(m.time * m.count for m in models), rows / device.bandwidth


def _key(launch, constexprs, options, device):
    return launch.name, repr(launch_plan.specialize(launch, constexprs)), repr(sorted(options.items())), device.arch


_JOBS: list = []


def _compile_job(i):
    from ..kernels.sass import compile_launch
    launch, constexprs, options, arch = _JOBS[i]
    return compile_launch(launch, constexprs, options, arch)


def compile_all(jobs: list, arch: int, workers: int = 1, progress=None) -> list:
    """Compile (launch, constexprs, options) jobs for `arch`, in `workers` forked processes (jobs reach them by
    index: launches do not pickle); the Compiled results in order. Minutes for a real model: with `progress` (a
    text stream) each kernel done is counted there, "compiled n of N", on one line."""
    global _JOBS
    # Triton's default (fusion on), said explicitly: newer Tritons warn on every compile when it is unset
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    _JOBS = [(l, c, o, arch) for l, c, o in jobs]
    if workers <= 1 or len(jobs) <= 1:
        return _counted(map(_compile_job, range(len(jobs))), len(jobs), arch, progress)
    import multiprocessing
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        return _counted(pool.imap(_compile_job, range(len(jobs)), chunksize=1), len(jobs), arch, progress)


def _counted(results, total: int, arch: int, progress) -> list:
    done = []
    for result in results:
        done.append(result)
        if progress is not None:
            progress.write(f"\rstatic model: compiled {len(done)} of {total} kernels for sm_{arch}")
            progress.write("\n" if len(done) == total else "")
            progress.flush()
    return done


def _model_triton(ck, launch, constexprs, options, grid, env, device: Device) -> LaunchModel:
    traffic = launch_plan.launch_traffic(launch, constexprs, env)
    programs = grid[0] * grid[1] * grid[2]
    warps = ck.num_warps
    loop = len(ck.loop)
    if loop:  # every program: its prologue and the cheapest way out; the main loop's trips from the traffic
        instructions = loop * warps * traffic.loop_trips + (ck.prologue + ck.exit_path) * warps * programs
    else:
        instructions = len(ck.instructions) * warps * programs
    sms_used = min(programs, device.sms)
    bandwidth = device.bandwidth * min(1.0, sms_used * PER_SM_SHARE / device.sms)
    t_mem = traffic.total / bandwidth
    t_issue = instructions / (ISSUE_PER_SM_CLOCK * device.clock * sms_used)
    per_iter_weights = traffic.weights / traffic.loop_trips if traffic.loop_trips else 0
    per_iter_bytes = traffic.total / traffic.loop_trips if traffic.loop_trips else 0
    config = " ".join(f"{k}={v}" for k, v in sorted(constexprs.items()) if k.startswith("BLOCK") or k == "SPLIT_K")
    return LaunchModel(
        launch.name, 1, grid=grid, config=f"{config} w{warps} s{ck.num_stages}".strip(), registers=ck.registers,
        spills=ck.spill_bytes, shared=ck.shared, mma=ck.mma,
        loop_per_weight=loop * warps / per_iter_weights if per_iter_weights else float("nan"),
        loop_per_byte=loop * warps / per_iter_bytes if per_iter_bytes and not per_iter_weights else float("nan"),
        bytes=traffic.total, instructions=instructions, t_mem=t_mem, t_issue=t_issue,
        time=max(t_mem, t_issue, device.launch_floor))


def _merge(models: list) -> list:
    """Identical launches (same kernel, grid, config and time) of the step's layers, counted once."""
    merged = {}
    for m in models:
        key = (m.name, m.grid, m.config, round(m.time * 1e12), round(m.bytes))
        if key in merged:
            merged[key].count += m.count
        else:
            merged[key] = dataclasses.replace(m)
    return list(merged.values())


def report(config_name: str, batch: int, context: int, device: Device, cache: dict, out=sys.stdout,
           workers: int = 1) -> dict:
    config = GptOssConfig.preset(config_name)
    print(f"static model: {config_name}, batch {batch}: recording the decode step's launches", file=sys.stderr,
          flush=True)
    models, step, roof = model_step(config, batch, context, device, cache, workers, progress=sys.stderr)
    launches = sum(m.count * m.kernels for m in models)
    print(f"\n{config_name}, batch {batch}, context {context}, {device.name}: {launches} launches per step", file=out)
    print(f"{'launch':<34}{'n':>4} {'grid':>14} {'config':<34}{'reg':>4}{'spill':>6}{'smem':>7} {'mma':<9}"
          f"{'loop/w':>7}{'loop/B':>7}{'MB':>9}{'us':>8} bound", file=out)
    for m in sorted(models, key=lambda m: -m.time * m.count):
        grid = "x".join(str(g) for g in m.grid) if m.grid else ""
        print(f"{m.name[:33]:<34}{m.count * m.kernels:>4} {grid:>14} {m.config[:33]:<34}{m.registers or '':>4}"
              f"{m.spills if m.grid else '':>6}{m.shared or '':>7} {m.mma:<9}{_fmt(m.loop_per_weight):>7}"
              f"{_fmt(m.loop_per_byte):>7}{m.bytes / 1e6:>9.2f}{m.time * 1e6:>8.2f} {m.bound}", file=out)
    tok_s, roof_tok_s = batch / step, batch / roof
    print(f"modelled step {step * 1e3:.3f} ms: {tok_s:,.0f} tok/s; roofline {roof * 1e3:.3f} ms: {roof_tok_s:,.0f} "
          f"tok/s; fraction of the roofline {roof / step:.1%}", file=out)
    return {"model": config_name, "batch": batch, "context": context, "device": device.name, "launches": launches,
            "step_ms": step * 1e3, "tok_s": tok_s, "roofline_tok_s": roof_tok_s, "fraction": roof / step,
            "kernels": [dataclasses.asdict(m) for m in models]}


def _fmt(x: float) -> str:
    return "" if math.isnan(x) else f"{x:.3f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["gpt-oss-20b", "gpt-oss-120b"])
    p.add_argument("--batch", nargs="+", type=int, default=[1, 64])
    p.add_argument("--context", type=int, default=1024, help="cached positions each sequence attends over")
    p.add_argument("--device", choices=sorted(DEVICES), default="h100")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--workers", type=int, default=1, help="processes compiling in parallel")
    args = p.parse_args(argv)
    cache, results = {}, []
    for name in args.models:
        if name not in PRESETS:
            raise SystemExit(f"static model: {name!r} is not a preset ({', '.join(sorted(PRESETS))})")
        for batch in args.batch:
            results.append(report(name, batch, args.context, DEVICES[args.device], cache, workers=args.workers))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
