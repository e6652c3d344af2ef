"""A static performance model of the decode step, computed from the compiled machine code (no GPU needed).

1. Record the launches of one decode step (the model's `decode_step` and the engine's sampler) at the real
   sizes, on meta tensors (kernels/launch_plan.py), as the modelled GPU would run them.
2. Compile every Triton launch for sm_90 with the runtime's specialisation and read its SASS (kernels/sass.py):
   registers, spills, shared memory, the tensor-core instruction, the main loop's instructions; and from those
   (model/sass_facts.py) the CTAs an SM holds, the tiles the main loop keeps loading while it computes, the
   dependent loads before the first stream, and whether the programs end by a fence and an atomic.
3. Charge each launch every cost the model knows (model/static_costs.py): its CUDA-graph node, the ramp (the
   dependent load chain, the pipeline's fill) and the drain, the body as the slowest of bandwidth, issue and
   latency (Little's law: the bytes in flight per SM that its stages, tiles and resident CTAs sustain, against
   bandwidth x latency), whole waves of CTAs (the tail), the split-K end (fence, atomic, last-CTA reduction);
   a torch op per kernel it launches. Bytes are what the kernel's @traffic declaration says it moves (the
   touched experts under uniform routing; the KV cache at `context` positions), or each tensor argument once;
   instructions are main-loop SASS x warps x loop trips, plus for every warp of every program the instructions
   before the loop and the fewest after it to an exit (a loop-less kernel: all its instructions).
   An autotuned launch is modelled with its fastest config (the autotuner picks by measurement).
4. Sum the step, once with the optimistic constants and once with the expected ones: a range, not one figure;
   modelled tok/s = batch / step time; the roofline is model/roofline.decode_bytes / bandwidth.

Every number comes from the code except the device constants below and the cost constants of
model/static_costs.py, each with its source. Assumed throughout: no overlap between kernels (a graph runs
them in order), no L2 reuse across launches, every main-loop trip alike, uniform routing.

    python -m gpt_oss_triton.model.static_model [--models gpt-oss-20b gpt-oss-120b] [--batch 1 64] [--context 1024]
"""
import argparse
import collections
import dataclasses
import json
import math
import os
import sys

import torch

from ..kernels import launch_plan
from .config import PRESETS, GptOssConfig
from .roofline import decode_bytes
from .static_costs import EXPECTED, OPTIMISTIC, SCENARIOS, charge_torch, charge_triton, little_bytes_per_sm


@dataclasses.dataclass(frozen=True)
class Device:
    """name; sms; bandwidth (B/s, achievable DRAM); clock (Hz); arch (compute capability x10)."""
    name: str
    sms: int
    bandwidth: float
    clock: float
    arch: int = 90


# H100 SXM5: 132 SMs and 3.35 TB/s HBM3 peak (NVIDIA H100 datasheet). Bandwidth 3.0 TB/s: the copy roofline
# taken as achievable (~90 % of peak; the GPU run measures it). Clock 1.755 GHz: a sustained clock below the
# 1.98 GHz boost (memory-bound decode need not hold boost).
H100 = Device("H100 SXM", sms=132, bandwidth=3.0e12, clock=1.755e9)
# H200: the same GH100 die (132 SMs) with 4.8 TB/s HBM3e (NVIDIA H200 datasheet); 90 % achievable, as for H100.
H200 = Device("H200", sms=132, bandwidth=0.9 * 4.8e12, clock=1.755e9)
DEVICES = {"h100": H100, "h200": H200}


@dataclasses.dataclass
class LaunchModel:
    """`count` identical ops of a step, each launching `kernels` kernels, modelled (times: per op, seconds;
    `time` with the expected constants, `time_optimistic` with the optimistic ones)."""
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
    resident: int = 0                       # CTAs per SM
    waves: float = 0.0                      # of CTAs over the SMs (expected: whole waves)
    trips: float = 0.0                      # main-loop trips per CTA
    ahead: int | None = None                # tiles loading while one computes (0: single-buffered)
    depth: int = 0                          # dependent global loads up to the first stream
    inflight: float = 0.0                   # bytes in flight per SM
    split_end: bool = False                 # fence + atomic + last-CTA reduction at the end
    t_mem: float = 0.0
    t_issue: float = 0.0
    t_latency: float = 0.0
    fixed: float = 0.0                      # graph node + ramp + drain + split end (expected)
    terms: dict = dataclasses.field(default_factory=dict)  # the expected time by term: node, ramp, body, ...
    bound: str = ""
    time: float = 0.0
    time_optimistic: float = 0.0


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
    """(launch models, step seconds with the expected constants, roofline seconds) of one decode step; compiles
    in `workers` processes, counting the kernels compiled on `progress` (a text stream) if given.
    `step_range(models)` gives (optimistic, expected) step seconds."""
    cache = {} if cache is None else cache
    env = {"context": context}
    launches = step_launches(config, batch, context, device.sms)
    jobs = [(l, c, o) for l, c, o in distinct_launches(launches) if _key(l, c, o, device) not in cache]
    for job, compiled in zip(jobs, compile_all(jobs, device.arch, workers, progress)):
        cache[_key(*job, device)] = compiled
    models = []
    for launch in launches:
        if isinstance(launch, launch_plan.TorchLaunch):
            models.append(_model_torch(launch, device))
            continue
        best = None
        for constexprs, options, grid in launch.candidates():
            m = _model_triton(cache[_key(launch, constexprs, options, device)], launch, constexprs, options, grid,
                              env, device)
            best = m if best is None or m.time < best.time else best
        models.append(best)
    rows = decode_bytes(config, batch, context).total
    models = _merge(models)
    return models, step_range(models)[1], rows / device.bandwidth


def step_range(models: list) -> tuple[float, float]:
    """(optimistic, expected) seconds of the step the launch models make up."""
    return (sum(m.time_optimistic * m.count for m in models), sum(m.time * m.count for m in models))


def graph_nodes(models: list) -> int:
    """Kernel nodes of the captured step: one per kernel every op launches."""
    return sum(m.count * m.kernels for m in models)


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


def _model_torch(launch, device: Device) -> LaunchModel:
    opt, exp = (charge_torch(launch.bytes, launch.count, device, c) for c in (OPTIMISTIC, EXPECTED))
    return LaunchModel(launch.op, 1, kernels=launch.count, bytes=launch.bytes, t_mem=exp.t_mem,
                       fixed=exp.total - exp.body, terms=_terms(exp), bound="launch", time=exp.total,
                       time_optimistic=opt.total)


def _terms(charge) -> dict:
    return {"graph node": charge.node, "ramp": charge.ramp, "body": charge.body, "drain": charge.drain,
            "split end": charge.split}


def _model_triton(ck, launch, constexprs, options, grid, env, device: Device) -> LaunchModel:
    traffic = launch_plan.launch_traffic(launch, constexprs, env)
    programs = grid[0] * grid[1] * grid[2]
    warps = ck.num_warps
    loop = len(ck.loop)
    if loop:  # every program: its prologue and the cheapest way out; the main loop's trips from the traffic
        instructions = loop * warps * traffic.loop_trips + (ck.prologue + ck.exit_path) * warps * programs
    else:
        instructions = len(ck.instructions) * warps * programs
    opt, exp = (charge_triton(ck, traffic.total, traffic.loop_trips if loop else 0, instructions, grid, device, c)
                for c in (OPTIMISTIC, EXPECTED))
    per_iter_weights = traffic.weights / traffic.loop_trips if traffic.loop_trips else 0
    per_iter_bytes = traffic.total / traffic.loop_trips if traffic.loop_trips else 0
    config = " ".join(f"{k}={v}" for k, v in sorted(constexprs.items()) if k.startswith("BLOCK") or k == "SPLIT_K")
    return LaunchModel(
        launch.name, 1, grid=grid, config=f"{config} w{warps} s{ck.num_stages}".strip(), registers=ck.registers,
        spills=ck.spill_bytes, shared=ck.shared, mma=ck.mma,
        loop_per_weight=loop * warps / per_iter_weights if per_iter_weights else float("nan"),
        loop_per_byte=loop * warps / per_iter_bytes if per_iter_bytes and not per_iter_weights else float("nan"),
        bytes=traffic.total, instructions=instructions, resident=exp.resident, waves=exp.waves, trips=exp.trips,
        ahead=exp.ahead, depth=exp.depth, inflight=exp.inflight, split_end=exp.split_end, t_mem=exp.t_mem,
        t_issue=exp.t_issue, t_latency=exp.t_latency, fixed=exp.total - exp.body, terms=_terms(exp),
        bound=exp.bound, time=exp.total, time_optimistic=opt.total)


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


def report(config_name: str, batch: int, context: int, device: Device, cache: dict, out=None,
           workers: int = 1) -> dict:
    out = sys.stdout if out is None else out
    config = GptOssConfig.preset(config_name)
    print(f"static model: {config_name}, batch {batch}: recording the decode step's launches", file=sys.stderr,
          flush=True)
    models, _, roof = model_step(config, batch, context, device, cache, workers, progress=sys.stderr)
    nodes = graph_nodes(models)
    print(f"\n{config_name}, batch {batch}, context {context}, {device.name}: {nodes} graph nodes per step", file=out)
    print(f"{'launch':<30}{'n':>4} {'grid':>11} {'config':<30}{'reg':>4}{'spl':>4}{'smem':>7} {'mma':<8}"
          f"{'loop/w':>7}{'cta':>4}{'wave':>5}{'trip':>5}{'ahd':>4}{'dep':>4}{'KB/SM':>6}{'MB':>8}{'mem':>7}"
          f"{'fixed':>7}{'us':>8}{'opt':>7} bound", file=out)
    for m in sorted(models, key=lambda m: -m.time * m.count):
        grid = "x".join(str(g) for g in m.grid) if m.grid else ""
        triton_row = bool(m.grid)
        print(f"{m.name[:29]:<30}{m.count * m.kernels:>4} {grid:>11} {m.config[:29]:<30}{m.registers or '':>4}"
              f"{m.spills if triton_row else '':>4}{m.shared or '':>7} {m.mma:<8}{_fmt(m.loop_per_weight):>7}"
              f"{m.resident if triton_row else '':>4}{_fmt(m.waves, 1) if triton_row else '':>5}"
              f"{_fmt(m.trips, 1) if triton_row else '':>5}{'' if m.ahead is None else m.ahead:>4}"
              f"{m.depth or '':>4}{_fmt(m.inflight / 1024, 0) if triton_row else '':>6}{m.bytes / 1e6:>8.2f}"
              f"{m.t_mem * 1e6:>7.2f}{m.fixed * 1e6:>7.2f}{m.time * 1e6:>8.2f}{m.time_optimistic * 1e6:>7.2f}"
              f" {m.bound}{' +split' if m.split_end else ''}", file=out)
    optimistic, expected = step_range(models)
    terms = collections.Counter()
    for m in models:
        for term, t in m.terms.items():
            terms[term] += t * m.count
        if m.bound in ("latency", "issue"):
            terms[f"over bandwidth ({m.bound})"] += (m.terms["body"] - m.t_mem) * m.count
    print("expected step by term: " + ", ".join(f"{k} {v * 1e3:.3f} ms" for k, v in terms.items()), file=out)
    fractions = roof / optimistic, roof / expected
    print(f"modelled step {optimistic * 1e3:.3f}-{expected * 1e3:.3f} ms: {batch / expected:,.0f}-"
          f"{batch / optimistic:,.0f} tok/s (expected-optimistic); roofline {roof * 1e3:.3f} ms: {batch / roof:,.0f} "
          f"tok/s; fraction of the roofline {fractions[1]:.1%}-{fractions[0]:.1%}", file=out)
    return {"model": config_name, "batch": batch, "context": context, "device": device.name, "graph_nodes": nodes,
            "launches": nodes, "step_ms": {"optimistic": optimistic * 1e3, "expected": expected * 1e3},
            "tok_s": {"optimistic": batch / optimistic, "expected": batch / expected}, "roofline_tok_s": batch / roof,
            "fraction": {"optimistic": fractions[0], "expected": fractions[1]},
            "expected_terms_ms": {k: v * 1e3 for k, v in terms.items()},
            "kernels": [dataclasses.asdict(m) for m in models]}


def assumptions(device: Device) -> list[str]:
    """What every modelled figure assumes, printed beside them."""
    lines = [f"{device.name}: {device.sms} SMs, {device.bandwidth / 1e12:.2f} TB/s achievable DRAM bandwidth, "
             f"{device.clock / 1e9:.3f} GHz, 4 warp-instructions per clock per SM"]
    for c in SCENARIOS:
        lines.append(f"{c.name}: DRAM round trip {c.dram_latency * 1e9:.0f} ns (Little's law: "
                     f"{little_bytes_per_sm(device, c) / 1024:.0f} KB in flight per SM to stream at full bandwidth), "
                     f"L2 round trip {c.l2_latency * 1e9:.0f} ns, {c.graph_node * 1e6:.1f} us per graph node, an SM "
                     f"at most {c.per_sm_share:g}x its share of bandwidth, "
                     f"{'whole waves (the tail costs a full wave), ramp and split end per wave' if c.whole_waves else 'fractional waves, ramp and split end once'}")
    lines.append("both: no overlap between kernels, no L2 reuse across launches, every main-loop trip alike, "
                 "uniform routing, the autotuner's fastest config; constants in model/static_costs.py")
    return lines


def _fmt(x: float, digits: int = 3) -> str:
    return "" if math.isnan(x) else f"{x:.{digits}f}"


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
    print("assumptions:\n  " + "\n  ".join(assumptions(DEVICES[args.device])))
    for name in args.models:
        if name not in PRESETS:
            raise SystemExit(f"static model: {name!r} is not a preset ({', '.join(sorted(PRESETS))})")
        for batch in args.batch:
            results.append(report(name, batch, args.context, DEVICES[args.device], cache, workers=args.workers))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"assumptions": assumptions(DEVICES[args.device]), "results": results}, f, indent=1,
                      default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
