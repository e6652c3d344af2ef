"""Compile a recorded launch for an NVIDIA target on the CPU and read its machine code.

    compile_launch(launch, constexprs, options, arch) -> Compiled: registers, spills, shared memory, warps,
        the SASS, the tensor-core instruction kind, the main loop's instructions and the copies it keeps in
        flight where it waits (copies_in_flight)

Triton compiles all the way to a cubin without a GPU; the wheel ships `cuobjdump` (resources and SASS). The
launch is specialised as Triton's launcher would (launch_plan.specialize). Must run without TRITON_INTERPRET
(the interpreter replaces @triton.jit functions): tests do it in a subprocess.
"""
import collections
import dataclasses
import os
import re
import subprocess
import tempfile

import triton

from .launch_plan import TritonLaunch, specialize

# Shared memory a block may use (opt-in maximum), bytes: CUDA C Programming Guide, "Technical Specifications
# per Compute Capability" (8.0: 163 KB, 8.6 / 8.9: 99 KB, 9.0: 227 KB).
SHARED_PER_BLOCK = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}
TARGETS = tuple(SHARED_PER_BLOCK)
_BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
_INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?);")
_BRANCH = re.compile(r"\bBRA\b.*?0x([0-9a-f]+)")


@dataclasses.dataclass
class Compiled:
    name: str
    arch: int
    constexprs: dict
    num_warps: int
    num_stages: int
    registers: int
    spill_bytes: int          # stack frame (local memory) per thread: 0 when nothing spills
    shared: int               # bytes of shared memory per block
    instructions: list        # SASS instructions (opcode + operands), in address order
    loop: list                # the main loop's instructions (main_loop_range); [] when the kernel has no loop
    prologue: int = 0         # instructions before the main loop
    exit_path: int = 0        # the fewest instructions from the main loop's exit to an EXIT

    @property
    def copies_in_flight(self) -> int | None:
        """copies_in_flight of the main loop."""
        return copies_in_flight(self.loop)

    @property
    def mma(self) -> str:
        """The tensor-core instruction kind: wgmma (HGMMA), mma.sync (HMMA), or none."""
        ops = {op(i) for i in self.instructions}
        if any(o.startswith("HGMMA") for o in ops):
            return "wgmma"
        return "mma.sync" if any(o.startswith("HMMA") for o in ops) else "none"

    def loop_mix(self, top: int = 12) -> list:
        return collections.Counter(op(i).split(".")[0] for i in self.loop).most_common(top)


_WAIT_GROUP = re.compile(r"^(?:@!?U?P\w+\s+)?DEPBAR\.LE\s+SB0,\s*(0x[0-9a-f]+|\d+)")


def copies_in_flight(loop: list) -> int | None:
    """The fewest asynchronous copy groups (cp.async, LDGSTS) a loop leaves in flight where it waits for them
    (cp.async.wait_group N is `DEPBAR.LE SB0, N`): 0 when it waits for every copy (one buffer: its loads and
    its math take turns), N > 0 when later tiles' copies stay in flight (a software-pipelined loop); None
    when it waits for none."""
    counts = [int(m.group(1), 0) for m in map(_WAIT_GROUP.match, loop) if m]
    return min(counts) if counts else None


def op(instruction: str) -> str:
    """The opcode of a SASS instruction (predicate guard dropped)."""
    return re.sub(r"^@!?U?P\w+\s+", "", instruction).split()[0]


def compile_launch(launch: TritonLaunch, constexprs: dict, options: dict, arch: int = 90) -> Compiled:
    signature, consts, attrs = specialize(launch, constexprs)
    src = triton.compiler.ASTSource(fn=launch.kernel, signature=signature, constexprs=consts, attrs=attrs)
    ck = triton.compile(src, target=triton.backends.compiler.GPUTarget("cuda", arch, 32), options=dict(options))
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(ck.asm["cubin"])
        f.flush()
        usage = _run("cuobjdump", "-res-usage", f.name)
        sass = _run("cuobjdump", "-sass", f.name)
    line = next(l for l in usage.splitlines() if "REG:" in l)
    instructions = [(int(a, 16), text.strip()) for a, text in _INSTRUCTION.findall(sass)]
    start, end = main_loop_range(instructions)
    texts = [t for _, t in instructions]
    return Compiled(launch.name, arch, constexprs, ck.metadata.num_warps, ck.metadata.num_stages,
                    registers=int(re.search(r"REG:(\d+)", line).group(1)),
                    spill_bytes=int(re.search(r"STACK:(\d+)", line).group(1)) + int(re.search(r"LOCAL:(\d+)", line).group(1)),
                    shared=ck.metadata.shared, instructions=texts, loop=texts[start:end],
                    prologue=start if end > start else 0,
                    exit_path=_shortest_exit(instructions, end) if end > start else 0)


def main_loop_range(instructions: list) -> tuple[int, int]:
    """[start, end) indices of the main loop in (address, text) instructions: among the innermost loops (backward
    branches), the one with tensor-core instructions, else the one with the most instructions. A pipelined Triton
    loop is one range [branch target, branch]. (0, 0) without a loop."""
    index = {addr: i for i, (addr, _) in enumerate(instructions)}
    loops = []
    for i, (addr, text) in enumerate(instructions):
        m = _BRANCH.search(text)
        if m and int(m.group(1), 16) < addr:
            loops.append((index[int(m.group(1), 16)], i + 1))
    innermost = [(s, e) for s, e in loops if not any(s < s2 and e2 < e for s2, e2 in loops if (s2, e2) != (s, e))]
    if not innermost:
        return 0, 0
    mma = [r for r in innermost if any(op(t).startswith(("HGMMA", "HMMA")) for _, t in instructions[r[0]:r[1]])]
    return max(mma or innermost, key=lambda r: r[1] - r[0])


def _shortest_exit(instructions: list, first: int) -> int:
    """The fewest instructions executed from index `first` to an EXIT (breadth-first over fall-through and branch
    edges: a program that leaves by the cheapest path, e.g. a split that is not the last to arrive)."""
    index = {addr: i for i, (addr, _) in enumerate(instructions)}
    dist, frontier = {first: 0}, [first]
    while frontier:
        nxt = []
        for i in frontier:
            if i >= len(instructions):
                continue
            text = instructions[i][1]
            if op(text) == "EXIT":
                return dist[i] + 1
            guarded = text.startswith("@")
            targets = []
            m = _BRANCH.search(text)
            if m:
                targets.append(index.get(int(m.group(1), 16), len(instructions)))
            if not (m and not guarded) and not (op(text) == "EXIT" and not guarded):
                targets.append(i + 1)
            for t in targets:
                if t not in dist:
                    dist[t] = dist[i] + 1
                    nxt.append(t)
        frontier = nxt
    return len(instructions) - first


def _run(tool: str, *args: str) -> str:
    return subprocess.run([os.path.join(_BIN, tool), *args], capture_output=True, text=True, check=True).stdout
