"""Static model of a tensor/expert-parallel decode step: the bytes each rank reads and the collectives it waits for.

A decode step of batch B on N ranks (model/parallel/plan.py) issues, in order on every rank's stream:
- one broadcast of the step's inputs (B tokens + B active flags, int64) from rank 0;
- one all-reduce after the embedding (each rank holds V/N rows): H x B bf16;
- per layer two all-reduces, after attention and after the MoE block: H x B x 2 bytes each;
- one all-gather of the logits (each rank computes V/N of them): V x B bf16 in all.
Each waits for the slowest rank, and none overlaps the compute around it (the next layer needs its result).

Collective time follows NCCL's own tuning model (src/graph/tuning.cc of NVIDIA/nccl, commit 5067397c, the
default `ncclTunerConstants`), intra-node, ring algorithm, taking the fastest protocol as NCCL's tuner does:
    time = base latency + steps x per-hop latency + bytes / algorithm bandwidth
with steps 2(N-1) for an all-reduce, N-1 for an all-gather, 1 for a broadcast; algorithm bandwidth = bus
bandwidth x N / steps; per protocol (`baseLatencies`, `hwLatencies` NVLink / PCIe, bus bandwidth):
    LL      6.6 us, 0.6 / 1.0 us per hop, half the link's, at most `llMaxBws` (Hopper 141 GB/s, Ampere 87.7)
    LL128  14.0 us, 1.9 / 2.5 us per hop, 0.92 of the link's
    Simple  8.4 us, 3.4 / 5.7 us per hop, the link's
At batch 1 (5.8 KB per all-reduce) LL wins and the latency is all there is: 7.8 us over 2 NVLink GPUs.
The rank's weight and KV reads take bytes / the device's achievable bandwidth. The experts a rank reads are
the distinct experts of its own that the batch routes to, and the step waits for the rank with the most:
at batch 1 the 4 chosen experts rarely split evenly (20b over 2 ranks: the busier one reads 2.70 of them
on average, not 2). Routing is modelled as uniform, as in model/roofline.py. Not modelled: kernel launch and
per-kernel overheads (bench/static_model.py's part), the host's step header (hidden by the engine's
lookahead while the host keeps ahead of the GPUs), GeForce cards' missing PCIe P2P (NCCL then stages
through host memory: slower than modelled here).

To add parallelism to a single-GPU static model (bench/static_model.py): `rank_read_bytes(config, N, batch,
context)` gives the busiest rank's bytes per step in place of one GPU's, and `collective_step_seconds(config,
N, batch, device)` the time its collectives add to each step.

`python bench/static_collectives.py` prints, for 20b and 120b on H100 SXM (NVLink), L40S and RTX 4090
(PCIe 4.0), batch 1 and 64, N = 1, 2, 4, 8: the modelled step time, its collective part and the speed-up.
"""
import math
from dataclasses import dataclass

import torch

from gpt_oss_triton.model.config import PRESETS
from gpt_oss_triton.model.roofline import BF16, MXFP4_BYTES_PER_PARAM, attention_params, expert_params, kv_bytes

# protocol -> (base latency, per-hop latency by link, bus bandwidth as a fraction of the link's)
NCCL_PROTOCOLS = {
    "LL": (6.6e-6, {"nvlink": 0.6e-6, "pcie": 1.0e-6}, 0.5),
    "LL128": (14.0e-6, {"nvlink": 1.9e-6, "pcie": 2.5e-6}, 0.92),
    "Simple": (8.4e-6, {"nvlink": 3.4e-6, "pcie": 5.7e-6}, 1.0),
}
NCCL_LL_MAX_BUS_BW = {"hopper": 141e9, "ampere": 87.7e9}  # llMaxBws, one node (Ada uses Ampere's index)


@dataclass(frozen=True)
class Device:
    name: str
    bandwidth: float  # achievable HBM/GDDR bytes/s
    link: str  # "nvlink" or "pcie"
    link_bw: float  # unidirectional bytes/s per GPU over that link
    arch: str  # NCCL's LL bandwidth class
    memory_gib: int


# Achievable bandwidth: perf-notes.md's ~3.0 TB/s for the H100's 3.35 TB/s peak; the others at the same 90 % of
# their datasheet peaks (L40S 864 GB/s, RTX 4090 1008 GB/s). Links: NVLink 4 900 GB/s bidirectional per H100
# (NVIDIA datasheet), PCIe 4.0 x16 32 GB/s per direction (PCI-SIG).
DEVICES = {
    "H100-SXM": Device("H100 SXM (NVLink)", 3.0e12, "nvlink", 450e9, "hopper", 80),
    "L40S": Device("L40S (PCIe 4.0)", 0.9 * 864e9, "pcie", 32e9, "ampere", 48),
    "RTX4090": Device("RTX 4090 (PCIe 4.0)", 0.9 * 1008e9, "pcie", 32e9, "ampere", 24),
}


def collective_seconds(kind: str, nbytes: float, ranks: int, device: Device) -> float:
    """NCCL's modelled time of one intra-node ring collective moving `nbytes` (the whole result), fastest protocol."""
    if ranks == 1:
        return 0.0
    steps = {"all_reduce": 2 * (ranks - 1), "all_gather": ranks - 1, "broadcast": 1}[kind]
    best = math.inf
    for name, (base, hop, share) in NCCL_PROTOCOLS.items():
        bus_bw = share * device.link_bw
        if name == "LL":
            bus_bw = min(bus_bw, NCCL_LL_MAX_BUS_BW[device.arch])
        algo_bw = bus_bw * (ranks / steps if kind != "broadcast" else 1.0)
        best = min(best, base + steps * hop[device.link] + nbytes / algo_bw)
    return best


def collectives(config, ranks: int, batch: int) -> list[tuple[str, float, int]]:
    """(kind, bytes, count) of every collective in one decode step on `ranks` ranks."""
    if ranks == 1:
        return []
    H = config.hidden_size
    return [("broadcast", 2 * batch * 8, 1), ("all_reduce", H * batch * BF16, 1 + 2 * config.num_hidden_layers),
            ("all_gather", config.vocab_size * batch * BF16, 1)]


def collective_step_seconds(config, ranks: int, batch: int, device: Device) -> float:
    return sum(n * collective_seconds(kind, nbytes, ranks, device) for kind, nbytes, n in collectives(config, ranks, batch))


def busiest_rank_experts(n_experts: int, k: int, ranks: int, batch: int, trials: int = 400, seed: int = 0) -> float:
    """Expected distinct experts, per layer, read by the rank that reads the most, when each of `batch` tokens
    routes to k distinct experts uniformly and rank r holds experts [r E/N, (r+1) E/N). Exact at batch 1
    (a multivariate hypergeometric), Monte Carlo with a fixed seed above."""
    per = n_experts // ranks
    if batch == 1:
        total = 0.0
        for split in _compositions(k, ranks):
            if any(c > per for c in split):
                continue
            total += max(split) * math.prod(math.comb(per, c) for c in split)
        return total / math.comb(n_experts, k)
    g = torch.Generator().manual_seed(seed)
    chosen = torch.rand(trials, batch, n_experts, generator=g).topk(k, dim=-1).indices
    touched = torch.zeros(trials, n_experts, dtype=torch.bool).scatter_(1, chosen.flatten(1), True)
    return touched.view(trials, ranks, per).sum(-1).max(-1).values.float().mean().item()


def _compositions(n: int, parts: int):
    if parts == 1:
        yield (n,)
        return
    for first in range(n + 1):
        for rest in _compositions(n - first, parts - 1):
            yield (first,) + rest


@dataclass(frozen=True)
class ParallelStep:
    weights_s: float  # the busiest rank's weight reads
    kv_s: float
    collectives_s: float

    @property
    def total_s(self) -> float:
        return self.weights_s + self.kv_s + self.collectives_s


def rank_read_bytes(config, ranks: int, batch: int, context: int) -> tuple[float, float]:
    """(weight bytes, KV bytes) the busiest rank reads in one decode step."""
    L = config.num_hidden_layers
    experts = busiest_rank_experts(config.num_experts, config.experts_per_token, ranks, batch)
    weights = (L * attention_params(config) * BF16 / ranks
               + L * experts * expert_params(config) * MXFP4_BYTES_PER_PARAM
               + L * config.num_experts * config.hidden_size * BF16  # the router, replicated
               + config.vocab_size * config.hidden_size * BF16 / ranks)
    kv_heads = max(config.num_key_value_heads // ranks, 1)
    kv = batch * kv_bytes(config, context) * kv_heads / config.num_key_value_heads
    return weights, kv


def parallel_step(config, ranks: int, batch: int, context: int, device: Device) -> ParallelStep:
    weights, kv = rank_read_bytes(config, ranks, batch, context)
    return ParallelStep(weights / device.bandwidth, kv / device.bandwidth,
                        collective_step_seconds(config, ranks, batch, device))


def table(models=("gpt-oss-20b", "gpt-oss-120b"), devices=tuple(DEVICES), batches=(1, 64), ranks=(1, 2, 4, 8),
          context: int = 4096) -> list[dict]:
    rows = []
    for m in models:
        config = PRESETS[m]
        for d in devices:
            device = DEVICES[d]
            for b in batches:
                one = parallel_step(config, 1, b, context, device).total_s
                for n in ranks:
                    s = parallel_step(config, n, b, context, device)
                    rows.append({"model": m, "device": device.name, "batch": b, "ranks": n, "step_s": s.total_s,
                                 "collectives_s": s.collectives_s, "tokens_per_s": b / s.total_s,
                                 "speedup": one / s.total_s})
    return rows


def main() -> None:
    print("Modelled decode step (context 4096): weight + KV reads of the busiest rank at the device's achievable "
          "bandwidth, plus NCCL's modelled collectives; launch overheads not included.")
    print("model | device | batch | ranks | ms/step | collectives ms | tok/s | speed-up vs 1 GPU")
    for r in table():
        print(f"{r['model']} | {r['device']} | {r['batch']} | {r['ranks']} | {1e3 * r['step_s']:.3f} | "
              f"{1e3 * r['collectives_s']:.3f} | {r['tokens_per_s']:.0f} | {r['speedup']:.2f}x")


if __name__ == "__main__":
    main()
