"""The static model's structure (model/static_costs.py, model/sass_facts.py, model/static_model.py), without
asserting any timing: what the SASS facts read from instruction text, that each known cost is charged in the
direction it must be (a single-buffered loop more than a pipelined one, more graph nodes more, a longer
dependent load chain more, a split-K end more), and that the modelled range is ordered.

Compiled kernels are built here from a few lines of SASS, and a decode step is modelled over such stand-ins:
no compiler runs."""
import dataclasses

import pytest

from gpt_oss_triton.kernels.sass import Compiled
from gpt_oss_triton.model import sass_facts, static_model
from gpt_oss_triton.model.config import GptOssConfig
from gpt_oss_triton.model.static_costs import EXPECTED, OPTIMISTIC, SCENARIOS, charge_torch, charge_triton
from gpt_oss_triton.model.static_model import H100

STREAM = ["LDGSTS.E.BYPASS.128 [R7], desc[UR4][R12.64], !P0", "LDGSTS.E.BYPASS.128 [R7+0x800], desc[UR4][R2.64]",
          "LDGDEPBAR", "LDGSTS.E [R16+0x4000], desc[UR4][R12.64]", "LDGDEPBAR", "LDGDEPBAR"]
MMA = ["HGMMA.64x16x16.F32.BF16 R24, gdesc[UR8], R24"] * 8 + ["WARPGROUP.DEPBAR.LE gsb0, 0x1"]
SPLIT_END = ["MEMBAR.ALL.GPU", "ATOMG.E.ADD.STRONG.GPU PT, R13, desc[UR4][R10.64], R13"]
CHAIN = ["S2R R8, SR_TID.X", "IMAD.WIDE R2, R8, 0x4, R4", "LDG.E R0, desc[UR4][R2.64]",   # counts
         "IMAD.WIDE R6, R0, 0x4, R4", "LDG.E R9, desc[UR4][R6.64]",                          # offsets[counts]
         "ISETP.GE.AND P0, PT, R9, UR5, PT", "@P0 EXIT",
         "IMAD.WIDE R12, R9, 0x4, R4", "LDG.E R10, desc[UR4][R12.64]"]                       # gather[offsets]


def compiled(wait: int = 0, prologue: list = (), epilogue: list = (), loop: bool = True, warps: int = 4,
             stages: int = 2, registers: int = 64, shared: int = 16384) -> Compiled:
    """A stand-in for a compiled kernel: `prologue`, then (loop) a main loop that waits with DEPBAR.LE SB0, `wait`
    and issues three commit groups per trip, then `epilogue` and an exit."""
    body = [f"DEPBAR.LE SB0, 0x{wait:x}", "BAR.SYNC.DEFER_BLOCKING 0x0", *MMA, *STREAM, "@P1 BRA 0x100"] if loop \
        else ["LDG.E R20, desc[UR4][R2.64]", "FFMA R21, R20, R20, RZ"]
    head = [*prologue, *STREAM] if loop else list(prologue)
    texts = head + body + list(epilogue) + ["EXIT"]
    start = len(head)
    return Compiled("_k", 90, {}, warps, stages, registers=registers, spill_bytes=0, shared=shared,
                    instructions=texts, loop=body if loop else [], prologue=start if loop else 0,
                    exit_path=len(epilogue) + 1 if loop else 0)


def charge(ck, grid=(132, 1, 1), trips=8, tile=16384, costs=EXPECTED):
    programs = grid[0] * grid[1] * grid[2]
    loop_trips = programs * trips if ck.loop else 0
    instructions = (len(ck.loop) * loop_trips + (ck.prologue + ck.exit_path) * programs) * ck.num_warps
    return charge_triton(ck, tile * max(loop_trips, programs), loop_trips, instructions, grid, H100, costs)


# --- what the SASS facts read -------------------------------------------------------------------------------------

@pytest.mark.parametrize("wait,ahead", [(0, 0), (3, 1), (6, 2)])
def test_tiles_ahead_from_the_loop_wait(wait, ahead):
    assert sass_facts.tiles_ahead(compiled(wait)) == ahead


def test_tiles_ahead_without_a_loop_or_copies():
    assert sass_facts.tiles_ahead(compiled(loop=False)) is None
    plain = compiled()
    plain = dataclasses.replace(plain, loop=[t for t in plain.loop if "DEPBAR" not in t])
    assert sass_facts.tiles_ahead(plain) == 0  # loads into registers: taken as serialised


def test_load_depth_follows_values_predicates_and_branches():
    assert sass_facts.load_depth(CHAIN) == 3
    independent = ["IMAD.WIDE R2, R8, 0x4, R4", "LDG.E R0, desc[UR4][R2.64]", "LDG.E R1, desc[UR4][R4.64]"]
    assert sass_facts.load_depth(independent) == 1
    # the stream's first copy addressed from the gathered row: one deeper than the chain
    assert sass_facts.load_depth(CHAIN + ["IMAD.WIDE R12, R10, 0x2, R4",
                                          "LDGSTS.E.BYPASS.128 [R7], desc[UR4][R12.64]"]) == 4
    # a load behind a branch on a loaded value waits for it even with a known address
    assert sass_facts.load_depth(["LDG.E R0, desc[UR4][R2.64]", "ISETP.NE.AND P1, PT, R0, RZ, PT",
                                  "@P1 BRA 0x40", "LDG.E R5, desc[UR4][R8.64]"]) == 2
    assert sass_facts.load_depth([]) == 0


def test_occupancy_limits():
    assert sass_facts.occupancy(compiled(registers=64, shared=16384)) == 8          # warps: 64 / (4 x ... ) regs
    assert sass_facts.occupancy(compiled(registers=255, shared=1024)) == 2          # registers: 256 x 32 x 4 each
    assert sass_facts.occupancy(compiled(registers=32, shared=100 * 1024)) == 2     # shared memory (+1 KB each)
    assert sass_facts.occupancy(compiled(registers=32, shared=0, warps=1)) == 32    # blocks per SM
    assert sass_facts.occupancy(compiled(registers=255, shared=200 * 1024, warps=8)) == 1


def test_split_end():
    assert sass_facts.split_end(compiled(epilogue=SPLIT_END))
    assert not sass_facts.split_end(compiled(epilogue=["MEMBAR.ALL.CTA", "STG.E desc[UR4][R2.64], R0"]))


# --- each cost in its direction -----------------------------------------------------------------------------------

@pytest.mark.parametrize("costs", SCENARIOS, ids=lambda c: c.name)
@pytest.mark.parametrize("grid", [(8, 1, 1), (132, 1, 1), (460, 1, 1)])
def test_single_buffered_loop_charged_more_than_pipelined(costs, grid):
    single = charge(compiled(0), grid, tile=8192, costs=costs)
    pipelined = charge(compiled(3, stages=3), grid, tile=8192, costs=costs)
    assert single.ahead == 0 and pipelined.ahead == 1
    assert single.inflight < pipelined.inflight
    assert single.t_latency > pipelined.t_latency
    if grid[0] <= 132:  # one 8 KB tile per SM is under bandwidth x latency: latency sets the body
        assert single.bound == "latency" and single.body > pipelined.body


def test_more_bytes_in_flight_until_the_bandwidth_is_reached():
    """Little's law: tiles ahead x tile x resident CTAs; once they cover bandwidth x latency, memory sets the time."""
    small = charge(compiled(6, stages=4), (8, 1, 1), tile=4096)
    full = charge(compiled(6, stages=4), (132 * 8, 1, 1), trips=64)
    assert small.bound == "latency"
    assert full.bound == "memory" and full.inflight >= H100.bandwidth * EXPECTED.dram_latency / H100.sms


def test_whole_waves_charge_the_tail():
    resident = sass_facts.occupancy(compiled())
    one = charge(compiled(0), (132 * resident, 1, 1))
    tail = charge(compiled(0), (132 * resident + 1, 1, 1))
    assert tail.waves == one.waves + 1 and tail.t_latency == pytest.approx(2 * one.t_latency)


def test_dependent_loads_and_split_ends_are_charged():
    plain = charge(compiled(3, stages=3))
    chained = charge(compiled(3, stages=3, prologue=CHAIN))
    split = charge(compiled(3, stages=3, epilogue=SPLIT_END))
    assert (plain.depth, chained.depth) == (1, 3) and chained.ramp > plain.ramp
    assert split.split_end and split.split > 0 == plain.split and split.total > plain.total


def test_graph_nodes_and_torch_ops_cost_their_launches():
    for costs in SCENARIOS:
        one, two = charge_torch(64, 1, H100, costs), charge_torch(64, 2, H100, costs)
        assert two.total - one.total == pytest.approx(costs.graph_node + 2 * costs.dram_latency)  # each kernel
        assert charge_torch(64, 1, H100, costs).total >= costs.graph_node + 2 * costs.dram_latency
        assert charge(compiled(3, stages=3), costs=costs).node == costs.graph_node


@pytest.mark.parametrize("ck", [compiled(0), compiled(3, stages=3, prologue=CHAIN, epilogue=SPLIT_END),
                                compiled(loop=False)], ids=["single", "chained-split", "loopless"])
@pytest.mark.parametrize("grid", [(1, 1, 1), (132, 1, 1), (1000, 1, 1)])
def test_charge_range_is_ordered(ck, grid):
    assert charge(ck, grid, costs=OPTIMISTIC).total <= charge(ck, grid, costs=EXPECTED).total


# --- a whole step over stand-in kernels ---------------------------------------------------------------------------

def _tiny(layers: int) -> GptOssConfig:
    tiny = GptOssConfig.preset("tiny")
    return dataclasses.replace(tiny, num_hidden_layers=layers, layer_types=tiny.layer_types[:layers])


def _stand_ins(config, batch, context) -> dict:
    """The model's compile cache filled with one stand-in per distinct launch of the step (no compiler)."""
    cache = {}
    for launch, constexprs, options in static_model.distinct_launches(
            static_model.step_launches(config, batch, context, H100.sms)):
        cache[static_model._key(launch, constexprs, options, H100)] = compiled(
            3, stages=options.get("num_stages", 3), warps=options.get("num_warps", 4),
            prologue=CHAIN, epilogue=SPLIT_END)
    return cache


@pytest.mark.parametrize("batch", [1, 4])
def test_step_range_is_ordered_and_more_layers_cost_more(batch):
    steps = {}
    for layers in (2, 4):
        config = _tiny(layers)
        models, expected, roof = static_model.model_step(config, batch, 64, H100, _stand_ins(config, batch, 64))
        optimistic, expected_again = static_model.step_range(models)
        assert 0 < roof < optimistic <= expected == expected_again
        steps[layers] = (static_model.graph_nodes(models), optimistic, expected)
    (n2, o2, e2), (n4, o4, e4) = steps[2], steps[4]
    assert n4 > n2 and o4 > o2 and e4 > e2


def test_report_states_its_range_and_assumptions(capsys, monkeypatch):
    config = _tiny(2)
    monkeypatch.setitem(static_model.PRESETS, "tiny-2", config)
    result = static_model.report("tiny-2", 1, 64, H100, _stand_ins(config, 1, 64))
    assert result["tok_s"]["optimistic"] >= result["tok_s"]["expected"] > 0
    assert result["fraction"]["optimistic"] >= result["fraction"]["expected"]
    text = "\n".join(static_model.assumptions(H100))
    for costs in SCENARIOS:
        assert f"{costs.dram_latency * 1e9:.0f} ns" in text and costs.name in text
    assert "tok/s (expected-optimistic)" in capsys.readouterr().out
