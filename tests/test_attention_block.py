"""TritonAttentionBlock against the reference AttentionBlock with the same random weights.

The reference prefills each whole sequence; the Triton block prefills (packed, variable length, in chunks)
into its cache and then decodes token by token. Layer 0 of the tiny preset slides (window 16, a ring buffer
of 16 slots that the decode steps wrap), layer 1 attends fully. Prefill is compared tightly in fp32 (its kernels
take fp32 too; the decode step is bf16 only, its kernels are checked in fp32 against their references in
tests/kernels); the bf16 path loosely against the fp32 reference: the bf16 reference itself is ~2x the bf16
tolerance away from it (six roundings: norm, qkv, rope, attention, out, residual), and the interpreter
rounds fp32 -> bf16 by truncation.
"""
import pytest
import torch
from helpers import assert_close

from gpt_oss_triton.model.attention import TritonAttentionBlock, TritonRMSNorm, rope_table
from gpt_oss_triton.model.config import GptOssConfig
from gpt_oss_triton.model.kv_cache import TritonKVCache
from gpt_oss_triton.model.reference import AttentionBlock, RMSNorm

CONFIG = GptOssConfig.preset("tiny")


def _blocks(layer, device, dtype=torch.float32):
    """An fp32 reference block with bf16-representable weights, and a Triton block of `dtype` with the same."""
    torch.manual_seed(layer)
    ref = AttentionBlock(CONFIG, layer, dtype=torch.float32, device=device)
    with torch.no_grad():  # weights that give peaked attention and sinks that matter
        ref.qkv.weight.normal_(0, 0.1)
        ref.qkv.bias.normal_(0, 0.5)
        ref.sinks.normal_(0, 2)
        ref.norm.scale.uniform_(0.5, 1.5)
        for p in ref.parameters():
            p.copy_(p.to(torch.bfloat16))
    tri = TritonAttentionBlock(CONFIG, layer, dtype=dtype, device=device)
    tri.load_state_dict(ref.state_dict())
    return ref, tri


def _reference(ref, x, device):
    cos, sin = rope_table(CONFIG, x.shape[1], device)
    with torch.no_grad():
        return ref(x.float(), cos, sin)


def test_same_state_dict_as_reference():
    ref, tri = AttentionBlock(CONFIG, 0, device="meta"), TritonAttentionBlock(CONFIG, 0, device="meta")
    assert {k: v.shape for k, v in ref.state_dict().items()} == {k: v.shape for k, v in tri.state_dict().items()}
    assert isinstance(tri.norm, TritonRMSNorm) and isinstance(tri.norm, RMSNorm)


@pytest.mark.parametrize("layer", [0, 1], ids=["sliding", "full"])
def test_prefill_fp32_equals_reference(layer, device):
    """Prefill in fp32, tightly: without a cache, and into the cache in two chunks (the decode step is bf16 only)."""
    ref, tri = _blocks(layer, device, torch.float32)
    B, T, P = 2, 27, 9
    x = torch.randn(B, T, CONFIG.hidden_size, device=device).to(torch.bfloat16).float()
    expected = _reference(ref, x, device)
    cos, sin = rope_table(CONFIG, 64, device)
    cache = TritonKVCache(CONFIG, B, 64, dtype=torch.float32, device=device)
    with torch.no_grad():
        assert_close(tri(x, cos, sin), expected, name="forward without cache")
        first = tri(x[:, :P], cos, sin, cache)
        cache.advance(P)
        rest = tri(x[:, P:], cos, sin, cache)
    assert_close(torch.cat([first, rest], dim=1), expected, name=f"layer {layer}: prefill {P} then {T - P}")


@pytest.mark.parametrize("layer,dtype", [(0, torch.bfloat16), (1, torch.bfloat16)], ids=["sliding-bf16", "full-bf16"])
def test_prefill_then_decode_equals_reference(layer, dtype, device):
    ref, tri = _blocks(layer, device, dtype)
    B, T, P = 2, 27, 9
    x = torch.randn(B, T, CONFIG.hidden_size, device=device).to(torch.bfloat16).to(dtype)
    expected = _reference(ref, x, device)
    scale = 4.0 if dtype == torch.bfloat16 else 1.0
    cos, sin = rope_table(CONFIG, 64, device)
    cache = TritonKVCache(CONFIG, B, 64, dtype=dtype, device=device)
    with torch.no_grad():
        assert_close(tri(x[:, :P], cos, sin), expected[:, :P], dtype, scale=scale, name="forward without cache")
        outs = [tri(x[:, :P], cos, sin, cache)]
        cache.advance(P)
        for t in range(P, T):
            outs.append(tri(x[:, t:t + 1], cos, sin, cache))
            cache.advance(1)
    assert cache.k[layer].shape[1] == (16 if layer == 0 else 64)
    assert_close(torch.cat(outs, dim=1), expected, dtype, scale=scale,
                 name=f"layer {layer}: prefill {P} + decode to {T}")


@pytest.mark.parametrize("layer", [0, 1], ids=["sliding", "full"])
def test_varlen_chunked_prefill_then_decode(layer, device):
    """Packed prompts of lengths 5 and 19, a second chunk of 12 and 3 tokens, then 3 decode steps."""
    ref, tri = _blocks(layer, device, torch.bfloat16)
    chunks = [[5, 19], [12, 3]]
    totals = [sum(c[b] for c in chunks) + 3 for b in range(2)]
    xs = [torch.randn(1, n, CONFIG.hidden_size, device=device).to(torch.bfloat16) for n in totals]
    expected = [_reference(ref, x, device)[0] for x in xs]
    cos, sin = rope_table(CONFIG, 64, device)
    cache = TritonKVCache(CONFIG, 2, 64, dtype=torch.bfloat16, device=device)
    got = [[], []]
    done = [0, 0]
    with torch.no_grad():
        for lens in chunks:
            x = torch.cat([xs[b][0, done[b]:done[b] + n] for b, n in enumerate(lens)])
            cu = torch.tensor([0, lens[0], sum(lens)], dtype=torch.int32, device=device)
            y = tri.prefill(x, cos, sin, cu, max(lens), cache)
            for b, n in enumerate(lens):
                got[b].append(y[cu[b]:cu[b] + n])
                done[b] += n
            cache.advance(torch.tensor(lens, dtype=torch.int32, device=device))
        for _ in range(3):
            y = tri.decode(torch.cat([xs[b][0, done[b]:done[b] + 1] for b in range(2)]), cos, sin, cache,
                           cache.rows, cache.rows_active)
            for b in range(2):
                got[b].append(y[b:b + 1])
                done[b] += 1
            cache.advance(1)
    for b in range(2):
        assert_close(torch.cat(got[b]), expected[b], torch.bfloat16, scale=4.0, name=f"layer {layer}, sequence {b}")


def test_triton_rmsnorm_matches_reference(device):
    ref = RMSNorm(CONFIG.hidden_size, device=device)
    with torch.no_grad():
        ref.scale.uniform_(0.5, 1.5)
    tri = TritonRMSNorm(CONFIG.hidden_size, device=device)
    tri.load_state_dict(ref.state_dict())
    x = torch.randn(3, 5, CONFIG.hidden_size, device=device).to(torch.bfloat16)
    delta = torch.randn_like(x)
    with torch.no_grad():
        assert_close(tri(x), ref(x))
        h, t = tri.add_forward(x, delta)
        assert_close(h, x + delta, name="residual")
        assert_close(t, ref(x + delta), name="norm of the residual")
