"""Every kernel the model launches compiles for the GPUs it runs on, as the runtime would compile it.

The launches come from the code: a gpt-oss-20b decode step at batch 1 and 64 and a packed prefill, recorded on
meta tensors (kernels/launch_plan.py), each with the configs its autotuner may pick and the specialisation
Triton's launcher applies to the recorded arguments (16-byte aligned pointers and integers divisible by 16
marked tt.divisibility=16, integers equal to 1 made constants). A kernel added to the model joins by itself.
- sm_90 (H100): every config, no register spills, shared memory within 227 KB, and the MoE expert GEMM's
  decode inner loop at most 0.10 warp-instructions per weight (the main loop's SASS x warps / weights per trip).
- sm_90: the hot loops (MoE expert GEMM, decode and prefill attention) are software-pipelined: where the
  loop waits for its copies (cp.async.wait_group N, DEPBAR.LE SB0, N) it leaves N > 0 groups in flight,
  never waiting for all of them at its top as a one-buffer (num_stages=2) loop does.
- sm_80, sm_86, sm_89 (A100, consumer Ampere and Ada): every kernel in its config with the most staged tile
  (num_stages x the product of its BLOCK sizes) compiles within the target's shared memory (163, 99, 99 KB).
Compiled on the CPU in one subprocess with two workers (tests run the interpreter).
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent('''
    import json, math
    from gpt_oss_triton.model.config import GptOssConfig
    from gpt_oss_triton.model.static_model import distinct_launches, prefill_launches, step_launches

    config = GptOssConfig.preset("gpt-oss-20b")
    decode = {1: step_launches(config, 1, 1024, 132), 64: step_launches(config, 64, 1024, 132)}
    prefill = prefill_launches(config, (600, 20))
    jobs = []
    for launch, constexprs, options in distinct_launches(decode[1] + decode[64] + prefill):
        is_decode_gemm = launch.name == "_moe_gemm_kernel" and launch.args["n_tokens"] <= 64
        jobs.append((90, launch, constexprs, options, is_decode_gemm))
    largest = {}
    for launch, constexprs, options in distinct_launches(decode[1] + prefill):
        size = options.get("num_stages", 3) * math.prod(v for k, v in constexprs.items() if k.startswith("BLOCK"))
        key = (launch.name, tuple(sorted((k, v) for k, v in constexprs.items() if not k.startswith(("BLOCK", "SPLIT")))))
        if key not in largest or size > largest[key][0]:
            largest[key] = (size, launch, constexprs, options)
    for arch in (80, 86, 89):
        jobs += [(arch, launch, constexprs, options, False) for _, launch, constexprs, options in largest.values()]

    from gpt_oss_triton.model.static_model import compile_all
    results = []
    for arch in (90, 80, 86, 89):
        mine = [job for job in jobs if job[0] == arch]
        for (_, launch, constexprs, options, per_weight), ck in zip(
                mine, compile_all([job[1:4] for job in mine], arch, workers=2)):
            row = {"kernel": launch.name, "arch": arch, "config": {k: str(v) for k, v in constexprs.items()},
                   "options": options, "spills": ck.spill_bytes, "shared": ck.shared, "registers": ck.registers,
                   "in_flight": ck.copies_in_flight}
            if per_weight:
                row["loop_per_weight"] = len(ck.loop) * ck.num_warps / (constexprs["BLOCK_N"] * constexprs["BLOCK_K"])
            results.append(row)
    print(json.dumps(results))
''')


@pytest.fixture(scope="module")
def compiled():
    triton = pytest.importorskip("triton")
    if not os.path.exists(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")):
        pytest.skip("this triton wheel ships no cuobjdump")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_every_kernel_compiles_for_sm90_without_spills(compiled):
    from gpt_oss_triton.kernels.sass import SHARED_PER_BLOCK
    sm90 = [r for r in compiled if r["arch"] == 90]
    names = {r["kernel"] for r in sm90}
    assert {"_moe_gemm_kernel", "_routing_decode_kernel", "_decode_attention_kernel", "_attention_kernel"} <= names
    bad = [r for r in sm90 if r["spills"] or r["shared"] > SHARED_PER_BLOCK[90]]
    assert not bad, f"spills or shared memory over {SHARED_PER_BLOCK[90]} B: {bad}"


@pytest.mark.slow
def test_moe_decode_inner_loop_issue_rate(compiled):
    loops = [r for r in compiled if "loop_per_weight" in r]
    assert len(loops) >= 8  # mlp1 and mlp2, every decode tile, batch 1 (split-K) and 64
    slow = [r for r in loops if r["loop_per_weight"] > 0.10]
    assert not slow, f"MoE decode inner loop above 0.10 warp-instructions per weight: {slow}"


HOT_LOOPS = ("_moe_gemm_kernel", "_decode_attention_kernel", "_attention_kernel")


@pytest.mark.slow
def test_hot_loops_keep_copies_in_flight(compiled):
    rows = [r for r in compiled if r["arch"] == 90 and r["kernel"] in HOT_LOOPS]
    assert {r["kernel"] for r in rows} == set(HOT_LOOPS)
    serial = [r for r in rows if not r["in_flight"]]
    assert not serial, f"main loops that wait for every copy at their top (one buffer): {serial}"


@pytest.mark.slow
@pytest.mark.parametrize("arch", [80, 86, 89])
def test_every_kernel_compiles_for_ampere_and_ada(compiled, arch):
    from gpt_oss_triton.kernels.sass import SHARED_PER_BLOCK
    rows = [r for r in compiled if r["arch"] == arch]
    assert {r["kernel"] for r in rows} == {r["kernel"] for r in compiled if r["arch"] == 90}
    bad = [r for r in rows if r["shared"] > SHARED_PER_BLOCK[arch]]
    assert not bad, f"shared memory over the {SHARED_PER_BLOCK[arch]} B of sm_{arch}: {bad}"
