"""What one launch of a decode step costs, charged from its compiled code and its traffic: the static model's
cost terms (model/static_model.py sums them), each constant with its source, in two sets (optimistic,
expected) where the constant is a guess.

A Triton launch of P programs, each running n main-loop trips of b bytes (n = the traffic's loop trips / P;
a loop-less kernel: one trip of its bytes per program), costs

    graph node + ramp + body + drain + split end

    graph node  the CUDA graph's per-kernel-node cost between one kernel's end and the next one's start
    ramp        (load depth - 1) dependent DRAM round trips before the first tile streams (kernels/sass facts:
                counts -> offsets -> gather -> weights is depth 4), plus one more to fill a pipelined loop;
                expected: per wave of CTAs, optimistic: once
    body        max(waves x n x trip, bytes / bandwidth, warp-instructions / issue rate), where
                trip = max(c, (latency + c) / (ahead + 1)): a CTA keeping `ahead` tiles loading while it
                computes one (c: the loop's instructions at one per scheduler per clock) moves (ahead + 1)
                tiles per latency: Little's law. A single-buffered loop (ahead = 0) pays latency + c per trip.
                bandwidth = min(DRAM, SMs used x per-SM share); waves = P / (SMs x resident CTAs), whole
                waves in the expected set (the tail wave costs a full one), fractional (>= 1) in the optimistic
    drain       one DRAM round trip: the last stores land before the next kernel may read them
    split end   programs that end by a GPU-scope fence and an atomic (the last to arrive reduces the split):
                the fence waits out its stores (a DRAM round trip), the atomic an L2 round trip, the last
                program reads the partials back (a DRAM round trip); expected: per wave, optimistic: once
A torch op (cuBLAS GEMM, copy, fill, index) launching k kernels costs k x (graph node + two DRAM round trips,
its read and its write) + bytes / bandwidth.
"""
import dataclasses
import math

from .sass_facts import HOPPER, SM, load_depth, occupancy, prologue, split_end, tiles_ahead


@dataclasses.dataclass(frozen=True)
class Costs:
    """One set of the model's guessed constants (seconds)."""
    name: str
    dram_latency: float
    l2_latency: float
    graph_node: float
    per_sm_share: float
    whole_waves: bool


# DRAM latency: Little's law on an H100 SXM says bandwidth x latency = the bytes in flight that sustain it:
# 3.0 TB/s / 132 SMs x 630-1040 ns = 14-23 KB per SM, the range public estimates give for Hopper (HBM3 latency
# ~600 cycles to > 1,000 cycles at 1.755 GHz); both ends are kept. L2 round trip: ~200-300 ns (assumed, about a
# third of DRAM's). Graph node: 0.5-1 us per kernel node between dependent kernels (a CUDA-graph kernel node
# costs ~0.6 us in a launch probe, ahrefs/ocannl#488; 1 us allows for the end-of-kernel signal). Per-SM share:
# an SM streams at most 2-3x its even share of DRAM bandwidth (assumed; L2-to-SM bandwidth bounds it).
# All of these are what a first GPU run calibrates (bench/static_vs_measured.py).
OPTIMISTIC = Costs("optimistic", dram_latency=630e-9, l2_latency=200e-9, graph_node=0.5e-6, per_sm_share=3.0,
                   whole_waves=False)
EXPECTED = Costs("expected", dram_latency=1040e-9, l2_latency=300e-9, graph_node=1.0e-6, per_sm_share=2.0,
                 whole_waves=True)
SCENARIOS = (OPTIMISTIC, EXPECTED)
ISSUE_PER_SM_CLOCK = 4  # warp-instructions: 4 SM sub-partitions, one warp scheduler each (Volta..Hopper)
SCHEDULERS = 4


@dataclasses.dataclass
class Charge:
    """One launch's cost terms (seconds) and the facts they rest on."""
    node: float = 0.0
    ramp: float = 0.0
    body: float = 0.0
    drain: float = 0.0
    split: float = 0.0
    t_mem: float = 0.0        # bytes over the bandwidth the grid can draw
    t_issue: float = 0.0      # warp-instructions over the issue rate of the SMs used
    t_latency: float = 0.0    # waves x trips x trip: what Little's law allows the CTAs in flight
    resident: int = 0         # CTAs per SM the kernel's resources allow
    waves: float = 0.0
    trips: float = 0.0        # main-loop trips per CTA
    ahead: int | None = None  # tiles loading while one computes (None: no loop)
    depth: int = 0            # dependent global loads up to the first stream
    inflight: float = 0.0     # bytes in flight per SM the config sustains
    split_end: bool = False

    @property
    def total(self) -> float:
        return self.node + self.ramp + self.body + self.drain + self.split

    @property
    def bound(self) -> str:
        """What sets the body: memory (bandwidth), latency (too few bytes in flight), issue."""
        return max((self.t_mem, "memory"), (self.t_latency, "latency"), (self.t_issue, "issue"))[1]


def charge_triton(ck, total_bytes: float, loop_trips: float, instructions: float, grid: tuple, device,
                  costs: Costs, sm: SM = HOPPER) -> Charge:
    """The cost of one launch of compiled kernel `ck` (kernels/sass.Compiled) over `grid`, moving `total_bytes`
    in `loop_trips` main-loop trips summed over the grid, issuing `instructions` warp-instructions."""
    programs = max(1, grid[0] * grid[1] * grid[2])
    resident = occupancy(ck, sm)
    sms_used = min(programs, device.sms)
    per_sm = min(resident, math.ceil(programs / device.sms))
    waves = programs / (device.sms * resident)
    waves = math.ceil(waves) if costs.whole_waves else max(1.0, waves)
    ahead = tiles_ahead(ck)
    looped = ahead is not None and loop_trips > 0
    trips = loop_trips / programs if looped else 1.0
    tile = total_bytes / (loop_trips if looped else programs)
    per_trip = len(ck.loop) if looped else len(ck.instructions)
    compute = per_trip * math.ceil(ck.num_warps / SCHEDULERS) / device.clock
    k = (ahead or 0) + 1
    trip = max(compute, (costs.dram_latency + compute) / k)
    bandwidth = min(device.bandwidth, sms_used * costs.per_sm_share * device.bandwidth / device.sms)
    t_mem = total_bytes / bandwidth
    t_issue = instructions / (ISSUE_PER_SM_CLOCK * device.clock * sms_used)
    t_latency = waves * trips * trip
    depth = max(load_depth(prologue(ck)), 1)
    fill = 1 if looped and ahead else 0  # a pipelined loop's first tile: not in its steady-state trip
    ramp = (depth - 1 + fill) * costs.dram_latency * (waves if costs.whole_waves else 1)
    ends = split_end(ck)
    split = (2 * costs.dram_latency + costs.l2_latency) * (waves if costs.whole_waves else 1) if ends else 0.0
    return Charge(node=costs.graph_node, ramp=ramp, body=max(t_mem, t_issue, t_latency),
                  drain=costs.dram_latency, split=split, t_mem=t_mem, t_issue=t_issue, t_latency=t_latency,
                  resident=resident, waves=waves, trips=trips, ahead=ahead, depth=depth,
                  inflight=per_sm * k * tile, split_end=ends)


def charge_torch(total_bytes: float, kernels: int, device, costs: Costs) -> Charge:
    """A torch op launching `kernels` kernels: each a graph node and a read and a write round trip."""
    t_mem = total_bytes / device.bandwidth
    return Charge(node=kernels * costs.graph_node, ramp=kernels * costs.dram_latency, body=t_mem,
                  drain=kernels * costs.dram_latency, t_mem=t_mem)


def little_bytes_per_sm(device, costs: Costs) -> float:
    """Bytes each SM must keep in flight for the GPU to stream at its bandwidth: bandwidth x latency / SMs."""
    return device.bandwidth * costs.dram_latency / device.sms
