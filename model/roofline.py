"""How many bytes a forward step must read and how many FLOPs it does, from the config alone; and the roofs
to set them against (the device's measured copy bandwidth, its looked-up dense bf16 peak).

The decode roof: a step is bandwidth-bound, so its floor is the bytes it must read divided by the measured
copy bandwidth. Counted as in ../shared/perf-notes.md: the linear weights only (biases, norms and sinks are
< 0.1 % and left out), MXFP4 experts at 4.25 bits per weight (16 bytes of codes + 1 scale byte per 32),
the embedding as a row gather (nothing), and the KV cache the step attends over.
"""
import math
import time
from dataclasses import dataclass

import torch

MXFP4_BYTES_PER_PARAM = 17 / 32  # 0.53125
BF16 = 2


@dataclass(frozen=True)
class StepBytes:
    """Bytes one decode step reads, by part."""

    attention: float
    experts: float
    router: float
    unembedding: float
    kv: float

    @property
    def weights(self) -> float:
        return self.attention + self.experts + self.router + self.unembedding

    @property
    def total(self) -> float:
        return self.weights + self.kv


def attention_params(config) -> int:
    """qkv + out weights of one layer."""
    return config.qkv_dim * config.hidden_size + config.hidden_size * config.num_attention_heads * config.head_dim


def expert_params(config) -> int:
    """mlp1 [2I, H] + mlp2 [H, I] of one expert."""
    return 3 * config.intermediate_size * config.hidden_size


def distinct_experts(n_experts: int, experts_per_token: int, batch: int) -> float:
    """Expected experts a layer touches when `batch` tokens each pick k of E uniformly: E·(1 − (1 − k/E)^B)."""
    return n_experts * (1 - (1 - experts_per_token / n_experts) ** batch)


def kv_bytes_per_position(config) -> int:
    """K and V of one position in one layer, bf16."""
    return 2 * config.num_key_value_heads * config.head_dim * BF16


def kv_bytes(config, context: int) -> float:
    """KV one sequence reads at `context` cached positions: full layers all of them, sliding layers the window."""
    full = sum(not config.is_sliding(i) for i in range(config.num_hidden_layers))
    sliding = config.num_hidden_layers - full
    window = min(context, config.sliding_window) if config.sliding_window else context
    return kv_bytes_per_position(config) * (full * context + sliding * window)


def decode_bytes(config, batch: int = 1, context: int = 0) -> StepBytes:
    """Bytes one decode step of `batch` sequences, each with `context` cached positions, must read."""
    L = config.num_hidden_layers
    experts = distinct_experts(config.num_experts, config.experts_per_token, batch)
    return StepBytes(
        attention=L * attention_params(config) * BF16,
        experts=L * experts * expert_params(config) * MXFP4_BYTES_PER_PARAM,
        router=L * config.num_experts * config.hidden_size * BF16,
        unembedding=config.vocab_size * config.hidden_size * BF16,
        kv=batch * kv_bytes(config, context),
    )


def forward_flops(config, batch: int, new_tokens: int, context: int = 0) -> float:
    """FLOPs of a forward over `new_tokens` per sequence after `context` cached ones (causal, with the window).

    2 per multiply-add: the active weights (attention, k experts, router, unembedding of every position) and
    the attention scores and weighted values (4·D per visible key per query head).
    """
    L = config.num_hidden_layers
    per_token = (L * (attention_params(config) + config.experts_per_token * expert_params(config)
                      + config.num_experts * config.hidden_size) + config.vocab_size * config.hidden_size)
    positions = range(context, context + new_tokens)
    keys_full = sum(p + 1 for p in positions)
    keys_sliding = sum(min(p + 1, config.sliding_window or math.inf) for p in positions)
    full = sum(not config.is_sliding(i) for i in range(L))
    keys = full * keys_full + (L - full) * keys_sliding
    return batch * (2 * per_token * new_tokens + 4 * config.head_dim * config.num_attention_heads * keys)


# Dense bf16 tensor-core peak (no sparsity) by device name, in FLOP/s; looked up, not measured.
BF16_PEAK_FLOPS = {
    "H100 SXM": 989e12, "H100 NVL": 835e12, "H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12,
    "GH200": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "RTX 4090": 165e12, "B200": 2250e12,
}


def bf16_peak_flops(name: str) -> float:
    """The dense bf16 peak of a device by its name (longest matching key), NaN when unknown."""
    for key in sorted(BF16_PEAK_FLOPS, key=len, reverse=True):
        if key in name:
            return BF16_PEAK_FLOPS[key]
    return float("nan")


def measure_copy_bandwidth(device="cuda", nbytes: int = 1 << 30) -> float:
    """Bytes/s of a large copy on `device`, counting bytes read + written (the decode roof's bandwidth)."""
    device = torch.device(device)
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    if device.type == "cuda":
        import triton.testing
        ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=50, rep=200)
        return 2 * nbytes / (ms * 1e-3)
    dst.copy_(src)  # first touch
    seconds = []
    for _ in range(5):
        t0 = time.perf_counter()
        dst.copy_(src)
        seconds.append(time.perf_counter() - t0)
    return 2 * nbytes / sorted(seconds)[len(seconds) // 2]
