"""Structural facts of a compiled kernel that its time rests on, read from its SASS (kernels/sass.Compiled).

    occupancy(ck, sm)      CTAs of this kernel an SM holds at once (registers, shared memory, warps, blocks)
    tiles_ahead(ck)        tiles the main loop keeps loading while it computes (0: single-buffered, load and
                           compute serialise; None: no loop)
    load_depth(text)       the longest chain of dependent global loads (a load whose address, predicate or
                           branch depends on an earlier load's value), before the first stream for a loop kernel
    split_end(ck)          whether the programs end with a GPU-scope fence and an atomic (a split reduction's
                           arrival, kernels/arrival.py)

All of these read the instruction text only (cuobjdump prints no scoreboard bits), so they are approximations
written down beside what they assume.
"""
import dataclasses
import re

from ..kernels.sass import op

_REG = re.compile(r"\b(U?R\d+|U?P\d)(?:\.(64|128))?")
_DEPBAR = re.compile(r"^DEPBAR\.LE\s+SB0,\s*(0x[0-9a-f]+|\d+)")
# Ops whose first operand is not written: stores, reductions without a result, copies into shared memory.
_NO_DEST = ("ST", "STG", "STS", "STL", "RED", "LDGSTS", "BAR", "BRA", "EXIT", "MEMBAR", "FENCE", "ERRBAR",
            "CGAERRBAR", "DEPBAR", "LDGDEPBAR", "WARPGROUP", "HGMMA", "SYNCS", "UTMALDG", "UTMASTG", "NOP", "RET",
            "CALL", "WARPSYNC", "BSSY", "BSYNC")
_GLOBAL_LOADS = ("LDG", "LD", "LDGSTS", "ATOMG", "ATOM", "UTMALDG")


@dataclasses.dataclass(frozen=True)
class SM:
    """Per-SM limits of a compute capability: CUDA C Programming Guide, "Technical Specifications per Compute
    Capability" (9.0: 64K 32-bit registers, 228 KB shared memory of which 227 KB per block, 1 KB reserved by
    the system per block, 64 resident warps, 32 resident blocks; registers allocated per warp in units of 256)."""
    registers: int = 65536
    shared: int = 228 * 1024
    shared_reserved: int = 1024
    warps: int = 64
    blocks: int = 32
    register_unit: int = 256


HOPPER = SM()


def occupancy(ck, sm: SM = HOPPER) -> int:
    """Resident CTAs per SM: the tightest of the register, shared memory, warp and block limits (>= 1)."""
    per_warp = -(-max(ck.registers, 1) * 32 // sm.register_unit) * sm.register_unit
    by_registers = sm.registers // (per_warp * ck.num_warps)
    by_shared = sm.shared // (ck.shared + sm.shared_reserved)
    return max(1, min(by_registers, by_shared, sm.warps // ck.num_warps, sm.blocks))


def tiles_ahead(ck) -> int | None:
    """Tiles in flight while the main loop computes one: the loop's cp.async wait (`DEPBAR.LE SB0, n`: at most
    n commit groups may stay outstanding) over the commit groups one trip issues (its LDGDEPBARs). `n = 0` at the
    top of the loop waits for every copy, the next tile's included: load and compute serialise. A loop that
    streams by TMA (UTMALDG, mbarrier waits) is taken as Triton pipelines it: num_stages - 1 tiles ahead.
    A loop with neither (plain loads into registers) is taken as serialised."""
    if not ck.loop:
        return None
    ops = [op(i) for i in ck.loop]
    if any(o.startswith("UTMALDG") for o in ops):
        return max(ck.num_stages - 1, 0)
    groups = sum(o == "LDGDEPBAR" for o in ops)
    waits = [int(m.group(1), 0) for m in (_DEPBAR.match(_unguarded(i)) for i in ck.loop) if m]
    if not groups or not waits:
        return 0
    return min(waits) // groups


def load_depth(instructions: list) -> int:
    """The longest chain of dependent global loads in `instructions` (in address order, read straight through):
    1 when every load's address is known without loading anything; counts -> offsets -> gather -> stream is 4.
    A register or predicate written from a load's value carries its depth; a branch guarded by such a predicate
    makes everything after it depend on it. Shared memory and L2-resident data are not told apart."""
    depth: dict[str, int] = {}
    control = 0
    longest = 0
    for text in instructions:
        guard, body = _split_guard(text)
        name = op(body)
        base = name.split(".")[0]
        operands = body[len(name):].strip()
        parts = _operands(operands)
        dest_regs, src_regs = [], []
        if base not in _NO_DEST and parts:
            n_dest = 2 if base in ("ISETP", "UISETP", "FSETP", "DSETP", "HSETP2", "PLOP3", "UPLOP3") else 1
            for part in parts[:n_dest]:
                dest_regs += _regs(part, name)
            for part in parts[n_dest:]:
                src_regs += _regs(part, "")
        else:
            for part in parts:
                src_regs += _regs(part, "")
        src_regs += _regs(guard, "")
        d = max([control] + [depth.get(r, 0) for r in src_regs])
        if base in _GLOBAL_LOADS:
            d += 1
            longest = max(longest, d)
        for r in dest_regs:
            if r not in ("RZ", "PT", "URZ", "UPT"):
                depth[r] = d
        if base == "BRA" and guard:
            control = max(control, d)
    return longest


def split_end(ck) -> bool:
    """Whether the kernel ends its programs with a GPU-scope fence and an atomic: each program publishes its
    partial and counts itself in; the last to arrive reduces (kernels/arrival.py)."""
    ops = [op(i) for i in ck.instructions]
    return any(o.startswith("MEMBAR") and o.endswith(".GPU") for o in ops) and \
        any(o.startswith(("ATOMG", "ATOM.", "RED.")) or o == "ATOM" for o in ops)


def prologue(ck) -> list:
    """The instructions before the main loop (all of them for a loop-less kernel)."""
    return ck.instructions[:ck.prologue] if ck.loop else ck.instructions


def _unguarded(text: str) -> str:
    return _split_guard(text)[1]


def _split_guard(text: str) -> tuple[str, str]:
    m = re.match(r"^(@!?U?P\w+)\s+(.*)$", text)
    return (m.group(1), m.group(2)) if m else ("", text)


def _operands(operands: str) -> list[str]:
    out, level, cur = [], 0, ""
    for ch in operands:
        if ch in "[":
            level += 1
        elif ch in "]":
            level -= 1
        if ch == "," and level == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur.strip())
    return out


def _regs(part: str, opcode: str) -> list[str]:
    """Registers an operand names; a destination of a 64/128-bit load or a .WIDE op spans 2 or 4."""
    regs = []
    for name, width in _REG.findall(part):
        if name in ("RZ", "PT", "URZ", "UPT"):
            continue
        n = {"64": 2, "128": 4}.get(width, 1)
        if opcode and name[0] in "RU" and not name.startswith("UP"):
            if ".128" in opcode:
                n = max(n, 4)
            elif ".64" in opcode or ".WIDE" in opcode:
                n = max(n, 2)
        prefix, number = re.match(r"(U?[RP])(\d+)", name).groups()
        regs += [f"{prefix}{int(number) + i}" for i in range(n)]
    return regs
