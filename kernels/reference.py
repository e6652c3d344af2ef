"""Plain-torch references for every op, written from the spec (../shared/spec.md).

They are the oracles the Triton kernels are tested against and the building blocks of the
reference model (`gpt_oss_triton.model.reference`). Math is done in fp32 and cast back to the
activation dtype at the points where a bf16 implementation would round.

Shapes: T tokens, H hidden, E experts, K experts per token, Hq query heads, Hkv KV heads, D head dim.
"""
import math

import torch

from .mxfp4 import mxfp4_dequantize


def rmsnorm_ref(x: torch.Tensor, scale: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """x [..., H], scale [H]: x * rsqrt(mean(x^2) + eps) * scale in fp32, cast to x.dtype."""
    t = x.float()
    t = t * torch.rsqrt(t.pow(2).mean(dim=-1, keepdim=True) + eps)
    return (t * scale.float()).to(x.dtype)


def yarn_inv_freq(head_dim: int, theta: float, factor: float, ntk_alpha: float, ntk_beta: float,
                  initial_context_length: int, truncate: bool = False) -> tuple[torch.Tensor, float]:
    """YaRN inverse frequencies [D/2] (fp32) and the concentration that multiplies cos and sin."""
    freq = theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    if factor <= 1.0:
        return 1.0 / freq, 1.0
    d_half = head_dim / 2
    low = d_half * math.log(initial_context_length / (ntk_beta * 2 * math.pi)) / math.log(theta)
    high = d_half * math.log(initial_context_length / (ntk_alpha * 2 * math.pi)) / math.log(theta)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    ramp = (torch.arange(d_half, dtype=torch.float32) - low) / (high - low)
    mask = 1 - ramp.clamp(0, 1)
    inv_freq = (1.0 / (factor * freq)) * (1 - mask) + (1.0 / freq) * mask
    return inv_freq, 0.1 * math.log(factor) + 1.0


def rope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor, concentration: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [len(positions), D/2] in fp32, already multiplied by the YaRN concentration."""
    freqs = positions.to(torch.float32)[:, None] * inv_freq.to(positions.device)[None, :]
    return freqs.cos() * concentration, freqs.sin() * concentration


def rope_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Half-split rotation of x [..., T, heads, D] by cos/sin [T, D/2] (cast to x.dtype first, as the spec says)."""
    cos = cos.unsqueeze(-2).to(x.dtype)
    sin = sin.unsqueeze(-2).to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sinks: torch.Tensor, *, sm_scale: float,
                  sliding_window: int = 0, q_start: int = 0) -> torch.Tensor:
    """Causal GQA attention with sinks.

    q [B, T, Hq, D]; k, v [B, S, Hkv, D] hold key positions 0..S-1; query t sits at position q_start + t.
    Key s is visible from query position p iff s <= p and (sliding_window == 0 or p - s < sliding_window).
    sinks [Hq]: one extra logit per head in the softmax normaliser, multiplying no value.
    Returns [B, T, Hq, D] in q.dtype. A query that sees no key returns zeros (only the sink is left).
    """
    B, T, Hq, D = q.shape
    S, Hkv = k.shape[1], k.shape[2]
    group = Hq // Hkv
    kf = k.float().repeat_interleave(group, dim=2)
    vf = v.float().repeat_interleave(group, dim=2)
    scores = torch.einsum("bthd,bshd->bhts", q.float(), kf) * sm_scale
    qpos = torch.arange(T, device=q.device)[:, None] + q_start
    kpos = torch.arange(S, device=q.device)[None, :]
    visible = kpos <= qpos
    if sliding_window:
        visible &= (qpos - kpos) < sliding_window
    scores = scores.masked_fill(~visible, float("-inf"))
    sink = sinks.float().view(1, Hq, 1, 1).expand(B, Hq, T, 1)
    probs = torch.softmax(torch.cat((scores, sink), dim=-1), dim=-1)[..., :-1]
    return torch.einsum("bhts,bshd->bthd", probs, vf).to(q.dtype)


def swiglu_ref(h: torch.Tensor, limit: float = 7.0, alpha: float = 1.702) -> torch.Tensor:
    """Interleaved, clamped swiglu: h [..., 2I] -> [..., I]; glu = h[0::2], linear = h[1::2]."""
    glu = h[..., 0::2].float().clamp(max=limit)
    lin = h[..., 1::2].float().clamp(-limit, limit)
    return (glu * torch.sigmoid(alpha * glu) * (lin + 1)).to(h.dtype)


def routing_ref(logits: torch.Tensor, experts_per_token: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of router logits [T, E] and the softmax over the chosen k.

    Returns (weights [T, K] fp32, indices [T, K] int32), sorted by logit, ties to the lower expert index.
    """
    values, indices = torch.sort(logits.float(), dim=-1, descending=True, stable=True)
    values, indices = values[:, :experts_per_token], indices[:, :experts_per_token]
    return torch.softmax(values, dim=-1), indices.to(torch.int32)


def moe_ref(t: torch.Tensor, gate_weight: torch.Tensor, gate_bias: torch.Tensor,
            mlp1_blocks: torch.Tensor, mlp1_scales: torch.Tensor, mlp1_bias: torch.Tensor,
            mlp2_blocks: torch.Tensor, mlp2_scales: torch.Tensor, mlp2_bias: torch.Tensor,
            *, experts_per_token: int, swiglu_limit: float = 7.0, first_expert: int = 0,
            expert_weights=None) -> torch.Tensor:
    """The MoE block after its norm: t [T, H] -> sum_k w_k * expert_k(t) [T, H] (no residual).

    gate [E, H] / [E]; mlp1 blocks [El, 2I, H/32, 16] / scales [El, 2I, H/32] / bias [El, 2I];
    mlp2 blocks [El, H, I/32, 16] / scales [El, H, I/32] / bias [El, H], holding the router's experts
    first_expert .. first_expert + El - 1 (all E by default). Chosen experts outside them add nothing: with
    expert parallelism another rank holds them, and the sum over ranks is the whole block.
    Only the experts some token chose are dequantized (one at a time), as a GEMM in t.dtype.
    `expert_weights(e_local, dtype) -> (w1, w2)` may supply them dequantized instead (a cache).
    """
    logits = torch.nn.functional.linear(t, gate_weight.to(t.dtype), gate_bias.to(t.dtype))
    weights, indices = routing_ref(logits, experts_per_token)
    out = torch.zeros(t.shape[0], mlp2_bias.shape[-1], dtype=torch.float32, device=t.device)
    for e in torch.unique(indices).tolist():
        if not first_expert <= e < first_expert + mlp1_blocks.shape[0]:
            continue
        rows, slot = (indices == e).nonzero(as_tuple=True)
        e_local = e - first_expert
        if expert_weights is not None:
            w1, w2 = expert_weights(e_local, t.dtype)
        else:
            w1 = mxfp4_dequantize(mlp1_blocks[e_local], mlp1_scales[e_local], t.dtype)
            w2 = mxfp4_dequantize(mlp2_blocks[e_local], mlp2_scales[e_local], t.dtype)
        h = torch.nn.functional.linear(t[rows], w1, mlp1_bias[e_local].to(t.dtype))
        y = torch.nn.functional.linear(swiglu_ref(h, swiglu_limit), w2, mlp2_bias[e_local].to(t.dtype))
        out.index_add_(0, rows, y.float() * weights[rows, slot, None])
    return out.to(t.dtype)


def sample_tokens_ref(logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """The distribution `sample_tokens` draws one row's next token from, as probabilities [V] fp32.

    softmax(logits / temperature), kept to the top_k most likely tokens (0: all) and renormalised, then to the
    most likely ones until they reach top_p (a token stays while those before it hold less than top_p) and
    renormalised again. temperature 0: all the mass on the first maximal logit (greedy).
    """
    x = logits.float()
    if temperature == 0:
        return torch.nn.functional.one_hot(x.argmax(), x.numel()).float()
    p = torch.softmax(x / temperature, dim=-1)
    order = torch.argsort(p, descending=True, stable=True)[:top_k or x.numel()]
    p_k = p[order] / p[order].sum()
    keep, before = [], 0.0
    for rank, q in enumerate(p_k.tolist()):
        if top_p < 1.0 and before >= top_p:
            break
        keep.append(rank)
        before += q
    out = torch.zeros_like(p)
    out[order[keep]] = p_k[keep]
    return out / out.sum()
