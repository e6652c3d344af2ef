"""The decode step as the engine runs it (a CUDA graph, sampler inside), measured and modelled side by side:
what a first GPU run needs to calibrate the static model's constants (model/static_costs.py).

For each preset and batch, at `--context` cached positions:
  step      back-to-back `DecodeGraph` steps (the engine's call: host bookkeeping + one replay, greedy sampler
            in the graph) and back-to-back bare replays, between CUDA events
  kernels   torch.profiler over replays: each kernel's device time per step (Triton kernels by name, torch's
            own kernels, cuBLAS included, as one row), and their count (the graph's kernel nodes)
  gap       (replay step - kernel time) / kernel nodes: the measured graph-node overhead, beside the model's
  tuned     the autotuner's pick per tuned kernel and key (TRITON_PRINT_AUTOTUNING=1 prints them too)
  forced    with --force: the step with each MoE / decode-attention tile config forced in turn
  modelled  the static model's optimistic / expected step and per-kernel times for this GPU (its SM count and
            measured copy bandwidth replace the datasheet's; the cost constants unchanged)

    python bench/static_vs_measured.py [--models gpt-oss-20b] [--batch 1 8 64] [--context 1024] [--force]
        [--checkpoint DIR] [--json out.json]
    python bench/static_vs_measured.py --dry-run      # CPU: tiny preset, eager steps, no profiler, no compile

Weights: `--checkpoint DIR` (e.g. synthetic ones from `gpt-oss-triton make-checkpoint`), else the preset's
seeded random weights built in memory: the step reads the same bytes whatever their values.
"""
import argparse
import collections
import dataclasses
import gc
import json
import os
import sys
import time
import traceback

if __name__ == "__main__" and "--dry-run" in sys.argv:  # the kernels run in Triton's interpreter on the CPU
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

TORCH_OPS = "torch ops (cuBLAS, copies, fills)"
FORCED_MODULES = ("moe_gemm", "decode_attention")  # the kernels whose configs are forced in turn


@dataclasses.dataclass
class Stepper:
    """One batch's captured decode step: `step()` runs the engine's call, `replay()` the bare graph."""
    model: object
    graph: object
    rows: list
    context: int
    device: torch.device

    def reset(self):
        self.graph.cache.lengths.fill_(self.context)

    def step(self):
        return self.graph(self.rows)

    def replay(self):
        if not self.graph.capture:
            return self.graph(self.rows)
        for g, _ in self.graph._graphs.values():
            g.replay()


def stepper(model, batch: int, context: int, steps: int) -> Stepper:
    from gpt_oss_triton.model.runtime.decode_graph import DecodeGraph
    from gpt_oss_triton.model.runtime.sampling import SamplingParams, SlotSampler

    device = model.embedding.weight.device
    cache = model.new_cache(batch, context + 4 * steps + 16)
    sampler = SlotSampler(batch, device)
    for b in range(batch):
        sampler.assign(b, SamplingParams(), seed=b)
    s = Stepper(model, DecodeGraph(model, cache, sampler), list(range(batch)), context, device)
    s.reset()
    for _ in range(2):  # capture (autotuning, compiling) and one replay
        s.step()
    _sync(device)
    return s


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device, fn, steps: int) -> float:
    """Seconds per call of `steps` back-to-back calls (CUDA events on a GPU, the wall clock on a CPU)."""
    if device.type != "cuda":
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        return (time.perf_counter() - t0) / steps
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(steps):
        fn()
    end.record()
    torch.cuda.synchronize(device)
    return start.elapsed_time(end) * 1e-3 / steps


def measure_step(s: Stepper, steps: int) -> dict:
    s.reset()
    engine = timed(s.device, s.step, steps)
    s.reset()
    replay = timed(s.device, s.replay, steps)
    return {"engine_step_s": engine, "replay_step_s": replay}


def profile_kernels(s: Stepper, steps: int) -> tuple[dict, int]:
    """({kernel name: device seconds per step}, kernels per step) over `steps` replays."""
    if s.device.type != "cuda":
        return {}, 0
    s.reset()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            s.replay()
        torch.cuda.synchronize(s.device)
    per_kernel, count = collections.Counter(), 0
    for event in prof.key_averages():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            per_kernel[kernel_group(event.key)] += event.self_device_time_total * 1e-6 / steps
            count += event.count
    return dict(per_kernel), round(count / steps)


def kernel_group(name: str) -> str:
    """Triton kernels by name (ours start with an underscore), everything else as torch's."""
    return name if name.startswith("_") else TORCH_OPS


def autotuners() -> dict:
    """{module.name: triton Autotuner} of every tuned kernel in our kernels."""
    import importlib
    import pkgutil

    import triton

    import gpt_oss_triton.kernels as kernels
    found = {}
    for info in pkgutil.iter_modules(kernels.__path__):
        try:
            module = importlib.import_module(f"gpt_oss_triton.kernels.{info.name}")
        except Exception:  # a module that does not import here is not tuned in this step either
            continue
        for name, obj in vars(module).items():
            if isinstance(obj, triton.runtime.Autotuner):
                found[f"{info.name}.{name}"] = obj
    return found


def tuned_picks() -> dict:
    """{autotuner: {key: the config it picked}} for every key tuned so far."""
    return {name: {str(key): str(cfg) for key, cfg in tuner.cache.items()}
            for name, tuner in autotuners().items() if tuner.cache}


def tile_groups(configs: list) -> dict:
    """The configs grouped by tile (SPLIT_K left to the launcher's pruning): {label: [configs]}."""
    groups = collections.defaultdict(list)
    for cfg in configs:
        tile = {k: v for k, v in cfg.kwargs.items() if k != "SPLIT_K"}
        label = " ".join(f"{k}={v}" for k, v in sorted(tile.items())) + f" w{cfg.num_warps} s{cfg.num_stages}"
        groups[label].append(cfg)
    return dict(groups)


def forced_steps(model, batch: int, context: int, steps: int) -> list:
    """The replay step with each tile config of the MoE and decode-attention kernels forced in turn."""
    out = []
    for name, tuner in autotuners().items():
        if name.split(".")[0] not in FORCED_MODULES or "prefill" in name:
            continue
        configs, cache = tuner.configs, dict(tuner.cache)
        try:
            for label, group in tile_groups(configs).items():
                tuner.configs = group
                tuner.cache.clear()
                try:
                    out.append({"kernel": name, "config": label, **measure_step(stepper(model, batch, context,
                                                                                          steps), steps)})
                except Exception as e:  # a config that fails here (resources) is a result too
                    out.append({"kernel": name, "config": label, "error": f"{type(e).__name__}: {e}"[:300]})
                _free()
        finally:
            tuner.configs = configs
            tuner.cache.clear()
            tuner.cache.update(cache)
    return out


def _free():
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def modelled(name: str, config, batch: int, context: int, device, cache: dict) -> dict:
    from gpt_oss_triton.model.static_model import graph_nodes, model_step, step_range

    models, _, roof = model_step(config, batch, context, device, cache, workers=os.cpu_count() or 1)
    optimistic, expected = step_range(models)
    per_kernel = collections.defaultdict(lambda: [0.0, 0.0])
    for m in models:
        key = kernel_group(m.name)
        per_kernel[key][0] += m.time_optimistic * m.count
        per_kernel[key][1] += m.time * m.count
    return {"step_s": {"optimistic": optimistic, "expected": expected}, "roofline_s": roof,
            "graph_nodes": graph_nodes(models), "kernels_s": {k: tuple(v) for k, v in per_kernel.items()}}


def print_case(name: str, batch: int, r: dict, out=None):
    out = sys.stdout if out is None else out
    m, meas = r.get("modelled"), r["measured"]
    print(f"\n{name} batch {batch}, context {r['context']}: engine step {meas['engine_step_s'] * 1e3:.3f} ms, "
          f"replay {meas['replay_step_s'] * 1e3:.3f} ms ({batch / meas['replay_step_s']:,.0f} tok/s)", file=out)
    if m:
        s = m["step_s"]
        print(f"  modelled {s['optimistic'] * 1e3:.3f}-{s['expected'] * 1e3:.3f} ms (optimistic-expected), "
              f"roofline {m['roofline_s'] * 1e3:.3f} ms; {m['graph_nodes']} graph nodes modelled", file=out)
    if r.get("kernels_per_step"):
        busy = sum(r["kernels_s"].values())
        gap = (meas["replay_step_s"] - busy) / r["kernels_per_step"]
        print(f"  kernels {busy * 1e3:.3f} ms in {r['kernels_per_step']} kernels per step: "
              f"{gap * 1e6:.2f} us between kernels per node (model: 0.5-1.0 us)", file=out)
    measured = r.get("kernels_s", {})
    modelled_k = m["kernels_s"] if m else {}
    if measured or modelled_k:
        print(f"  {'kernel':<40}{'model opt us':>13}{'model exp us':>13}{'measured us':>12}", file=out)
        for key in sorted(set(measured) | set(modelled_k), key=lambda k: -measured.get(k, 0)):
            o, e = modelled_k.get(key, (float("nan"),) * 2)
            print(f"  {key[:39]:<40}{o * 1e6:>13.1f}{e * 1e6:>13.1f}{measured.get(key, float('nan')) * 1e6:>12.1f}",
                  file=out)
    for f in r.get("forced", []):
        what = f"{f['replay_step_s'] * 1e3:.3f} ms" if "replay_step_s" in f else f["error"]
        print(f"  forced {f['kernel']} {f['config']}: {what}", file=out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["gpt-oss-20b"])
    p.add_argument("--batch", nargs="+", type=int, default=[1, 8, 64])
    p.add_argument("--context", type=int, default=1024)
    p.add_argument("--steps", type=int, default=20, help="back-to-back steps per timing")
    p.add_argument("--checkpoint", default=None, help="a checkpoint directory instead of the preset's random weights")
    p.add_argument("--force", action="store_true", help="also time each MoE / decode-attention config forced")
    p.add_argument("--no-model", action="store_true", help="leave the static model out")
    p.add_argument("--dry-run", action="store_true",
                   help="on the CPU: the tiny preset, eager steps, no profiler and no static model")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    from gpt_oss_triton.model import GptOss
    from gpt_oss_triton.model.environment import environment
    from gpt_oss_triton.model.roofline import measure_copy_bandwidth
    from gpt_oss_triton.model.static_model import H100

    if args.dry_run:
        args.models, args.batch, args.context, args.steps, args.no_model = ["tiny"], args.batch[:2], 16, 1, True
        dev = torch.device("cpu")
    elif not torch.cuda.is_available():
        raise SystemExit("static_vs_measured: no CUDA device (use --dry-run to exercise it on the CPU)")
    else:
        dev = torch.device("cuda")
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(0)
        bandwidth = measure_copy_bandwidth("cuda")
        device = dataclasses.replace(H100, name=props.name, sms=props.multi_processor_count, bandwidth=bandwidth,
                                     arch=props.major * 10 + props.minor)
    else:
        bandwidth, device = float("nan"), dataclasses.replace(H100, name="cpu (dry run)")
    print(f"{device.name}: {device.sms} SMs, measured copy bandwidth {bandwidth / 1e9:.0f} GB/s")
    record = {"environment": environment(device.name), "bandwidth": bandwidth, "results": [], "errors": []}
    configs = {}
    for name in args.models:  # measured first, every case written as it comes: a time limit loses no measurement
        model = GptOss.from_pretrained(args.checkpoint or name, backend="triton", device=dev)
        configs[name] = model.config
        for batch in args.batch:
            r = {"model": name, "batch": batch, "context": args.context}
            try:
                with torch.inference_mode():
                    s = stepper(model, batch, args.context, args.steps)
                    r["measured"] = measure_step(s, args.steps)
                    r["kernels_s"], r["kernels_per_step"] = profile_kernels(s, min(args.steps, 5))
                    del s
                    if args.force:
                        r["forced"] = forced_steps(model, batch, args.context, args.steps)
                record["results"].append(r)
                print_case(name, batch, r)
            except Exception as e:  # one case failing (memory, a kernel) leaves the others to run
                traceback.print_exc()
                record["errors"].append({"model": name, "batch": batch, "error": f"{type(e).__name__}: {e}"})
            _free()
            record["autotuned"] = tuned_picks()
            _write(record, args.json)
        del model
        _free()
    compile_cache = {}
    for r in record["results"] if not args.no_model else []:  # the static model: CPU work, after the GPU's
        try:
            r["modelled"] = modelled(r["model"], configs[r["model"]], r["batch"], args.context, device, compile_cache)
            print_case(r["model"], r["batch"], r)
        except Exception as e:
            traceback.print_exc()
            record["errors"].append({"model": r["model"], "batch": r["batch"], "error": f"model: {e}"})
        _write(record, args.json)
    return 1 if record["errors"] and not record["results"] else 0


def _write(record: dict, path: str | None):
    if path:
        with open(path + ".part", "w") as f:
            json.dump(record, f, indent=1, default=str)
        os.replace(path + ".part", path)


if __name__ == "__main__":
    sys.exit(main())
