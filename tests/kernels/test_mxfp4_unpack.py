"""The in-register MXFP4 decode of the repacked layout against the torch codec, bit for bit.

FAST path: its PTX (mxfp4_unpack.DECODE_ASM) cannot run in the interpreter, so a small emulator executes the
exact instruction text over every 16-bit value of both halves of a register and every scale byte it is meant
for (0..128). Portable path: the Triton code in the interpreter, every byte value under every scale byte.
"""
import re

import pytest
import torch
import triton
import triton.language as tl

from gpt_oss_triton.kernels.mxfp4 import mxfp4_dequantize, mxfp4_unrepack
from gpt_oss_triton.kernels.mxfp4_unpack import DECODE_ASM, FAST_MAX_SCALE, fast_decode_ok, mxfp4_decode4, mxfp4_factor

M32 = (1 << 32) - 1


def _bf16x2(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int64 words -> their two bf16 halves as fp32 (exact)."""
    def half(h):
        return (h.to(torch.int32) << 16).view(torch.float32)
    return half(v & 0xFFFF), half((v >> 16) & 0xFFFF)


def _pack_bf16x2(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    def bits(x):  # fp32 -> bf16 round-to-nearest-even (torch's cast), as the 16 bits
        return x.to(torch.bfloat16).view(torch.int16).to(torch.int64) & 0xFFFF
    return bits(lo) | (bits(hi) << 16)


def emulate(asm: str, operands: dict) -> dict:
    """Run the PTX block on int64 tensors of 32-bit values (operands: '$4' -> tensor ...); returns the registers."""
    regs = dict(operands)

    def val(tok):
        tok = tok.strip()
        if tok in regs:
            return regs[tok]
        return int(tok, 0)

    for line in asm.splitlines():
        line = line.strip().rstrip(";")
        if not line or line in "{}" or line.startswith((".reg", "//")):
            continue
        m = re.fullmatch(r"([\w.]+)\s+(.*)", line)
        opcode, args = m.group(1), [a.strip() for a in m.group(2).split(",")]
        d, src = args[0], [val(a) for a in args[1:]]
        if opcode == "mov.b32":
            out = torch.as_tensor(src[0]) & M32
        elif opcode == "and.b32":
            out = src[0] & src[1]
        elif opcode == "shl.b32":
            out = (src[0] << src[1]) & M32
        elif opcode == "shr.u32":
            out = src[0] >> src[1]
        elif opcode == "mul.lo.u32":
            out = (src[0] * src[1]) & M32
        elif opcode == "prmt.b32":  # default mode: byte i of d = byte sel[i] of {b, a}
            a, b, sel = src
            both = [(a >> (8 * i)) & 0xFF for i in range(4)] + [(b >> (8 * i)) & 0xFF for i in range(4)]
            out = sum(both[(sel >> (4 * i)) & 7] << (8 * i) for i in range(4))
        elif opcode == "fma.rn.bf16x2":
            (a0, a1), (b0, b1), (c0, c1) = (_bf16x2(x) for x in src)
            out = _pack_bf16x2(a0 * b0 + c0, a1 * b1 + c1)  # the products are exact: one rounding, as fma
        else:
            raise AssertionError(f"the emulator does not know {opcode!r}: extend it with the instruction")
        regs[d] = out
    return regs


def _reference(values: torch.Tensor, scale: int) -> torch.Tensor:
    """[n] repacked 16-bit values (n a multiple of 8192) -> [n, 4] fp32: their codes 4i..4i+3 through the torch
    codec (mxfp4_unrepack, then mxfp4_dequantize) under one scale byte."""
    n = values.numel()
    blocks = torch.stack((values & 0xFF, values >> 8), -1).to(torch.uint8).view(1, n // 128, 16, 16)
    scales = torch.full((1, n // 128, 16), scale, dtype=torch.uint8)
    raw, _ = mxfp4_unrepack(blocks, scales)
    return mxfp4_dequantize(raw, scales, torch.float32).reshape(n, 4)


def test_fast_decode_ptx_is_bit_exact():
    g = torch.Generator().manual_seed(0)
    lo = torch.arange(1 << 16, dtype=torch.int64)
    hi = lo[torch.randperm(1 << 16, generator=g)]  # every value in both halves, paired at random
    for scale in (0, 1, 2, 60, 119, 121, 126, 127, FAST_MAX_SCALE):
        f = torch.full_like(lo, scale * 0x00800080 + 0x3F003F00)  # mxfp4_factor's FAST value
        regs = emulate(DECODE_ASM.value, {"$4": lo | (hi << 16), "$5": f, "$6": f})
        for half, values in ((0, lo), (1, hi)):
            want = _reference(values, scale).to(torch.bfloat16).float()
            for j in range(4):
                got = _bf16x2(regs[f"${j}"])[half]
                same = got.view(torch.int32) == want[:, j].view(torch.int32)  # bits: -0.0 is not +0.0
                assert same.all(), (f"code {j}, scale {scale}: {int(values[~same][0]):#06x} decodes to "
                                    f"{got[~same][0].item()!r}, expected {want[~same, j][0].item()!r}")


def test_fast_decode_pairs_factors_per_half():
    """Each half of a register takes its own element's factor (the asm is elementwise however Triton packs)."""
    v = torch.tensor([0x0080 | (0x0080 << 16)], dtype=torch.int64)  # code 0 = 1.0 in both halves
    f0, f1 = (torch.tensor([s * 0x00800080 + 0x3F003F00]) for s in (127, 120))
    lo, hi = _bf16x2(emulate(DECODE_ASM.value, {"$4": v, "$5": f0, "$6": f1})["$0"])
    assert (lo.item(), hi.item()) == (1.0, 2.0 ** -7)


@triton.jit
def _decode_kernel(packed_ptr, scales_ptr, out_ptr, n, FAST: tl.constexpr, OUT_DTYPE: tl.constexpr,
                   BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    packed = tl.load(packed_ptr.to(tl.pointer_type(tl.uint16)) + offs, mask=mask, other=0)
    factor = mxfp4_factor(tl.load(scales_ptr + offs, mask=mask, other=0), FAST)
    v0, v1, v2, v3 = mxfp4_decode4(packed, factor, FAST, OUT_DTYPE)
    tl.store(out_ptr + offs * 4, v0, mask=mask)
    tl.store(out_ptr + offs * 4 + 1, v1, mask=mask)
    tl.store(out_ptr + offs * 4 + 2, v2, mask=mask)
    tl.store(out_ptr + offs * 4 + 3, v3, mask=mask)


@pytest.mark.filterwarnings("ignore:overflow encountered in multiply")  # 6 * 2**127 is inf, in the codec too
def test_portable_decode_matches_codec_bit_exact(device):
    """The portable decode, every scale byte's boundary: 0 (subnormal 2**-127), 1, 2, 127, 128/129 (the fast
    path's limit), 254 (6 * 2**127 overflows to inf)."""
    g = torch.Generator().manual_seed(1)
    values = torch.randperm(1 << 16, generator=g)[:8192].to(torch.int64)
    packed = torch.stack((values & 0xFF, values >> 8), -1).to(torch.uint8).flatten().to(device)
    for scale in (0, 1, 2, 100, 121, 127, 128, 129, 200, 254):
        scales = torch.full((values.numel(),), scale, dtype=torch.uint8, device=device)
        out = torch.empty(values.numel(), 4, dtype=torch.float32, device=device)
        _decode_kernel[(triton.cdiv(values.numel(), 1024),)](packed, scales, out, values.numel(), FAST=False,
                                                            OUT_DTYPE=tl.float32, BLOCK=1024)
        same = out.cpu().view(torch.int32) == _reference(values, scale).view(torch.int32)
        assert same.all(), f"scale {scale}: {int((~same).sum())} values differ"


@pytest.mark.gpu
@pytest.mark.parametrize("scale", [0, 1, 121, 128])
def test_fast_decode_gpu(scale):
    values = torch.arange(1 << 16, dtype=torch.int64)
    packed = torch.stack((values & 0xFF, values >> 8), -1).to(torch.uint8).flatten().cuda()
    scales = torch.full((values.numel(),), scale, dtype=torch.uint8, device="cuda")
    out = torch.empty(values.numel(), 4, dtype=torch.bfloat16, device="cuda")
    _decode_kernel[(64,)](packed, scales, out, values.numel(), FAST=True, OUT_DTYPE=tl.bfloat16, BLOCK=1024)
    want = _reference(values, scale).to(torch.bfloat16)
    assert torch.equal(out.cpu().view(torch.int16), want.view(torch.int16))


def test_fast_decode_range():
    assert fast_decode_ok(torch.tensor([0, 90, FAST_MAX_SCALE], dtype=torch.uint8))
    assert not fast_decode_ok(torch.tensor([FAST_MAX_SCALE + 1], dtype=torch.uint8))
    assert fast_decode_ok(torch.zeros(0, dtype=torch.uint8))
