"""Which slice of every tensor each rank of a tensor/expert-parallel model holds.

With N ranks (N divides the 64 query heads: 1, 2, 4, 8 for gpt-oss), rank r holds
- attention, tensor-parallel: query heads [r·Hq/N, (r+1)·Hq/N) with their sinks; the KV heads those read:
  Hkv/N of them when N <= Hkv, else the one KV head its query heads share (replicated over N/Hkv ranks, as
  vLLM does). qkv is column-parallel (its rows for those heads), the output projection row-parallel (its
  columns for those heads), so a sum over ranks of each rank's out(o) is the whole projection; its bias is
  added by rank 0 alone (the others hold zeros in its place);
- MoE, expert-parallel: experts [r·E/N, (r+1)·E/N) (mlp1/mlp2 blocks, scales and biases); the router,
  replicated, so every rank routes every token;
- embedding and unembedding: vocabulary rows [r·V/N, (r+1)·V/N);
- norms: replicated.
Tensors the plan leaves out are read whole.
"""
from dataclasses import dataclass

from ...loader.names import expected_tensors
from ...loader.sharding import TensorSlice
from ..config import GptOssConfig


@dataclass(frozen=True)
class ShardPlan:
    config: GptOssConfig
    rank: int = 0
    world_size: int = 1

    def __post_init__(self):
        c, n = self.config, self.world_size
        problems = []
        if n < 1 or not 0 <= self.rank < n:
            problems.append(f"rank {self.rank} is not in 0..{n - 1}")
        for what, count in (("query heads", c.num_attention_heads), ("experts", c.num_experts),
                            ("vocabulary rows", c.vocab_size)):
            if n >= 1 and count % n:
                problems.append(f"{n} ranks do not divide the {count} {what}")
        if n >= 1 and c.num_key_value_heads % n and n % c.num_key_value_heads:
            problems.append(f"{n} ranks neither divide the {c.num_key_value_heads} KV heads nor are a multiple "
                            "of them (to replicate each KV head over the same number of ranks)")
        if problems:
            raise ValueError(f"tensor parallel {n}: " + "; ".join(problems))

    def _share(self, count: int) -> tuple[int, int]:
        per = count // self.world_size
        return self.rank * per, (self.rank + 1) * per

    @property
    def q_heads(self) -> tuple[int, int]:
        return self._share(self.config.num_attention_heads)

    @property
    def kv_heads(self) -> tuple[int, int]:
        hkv, n = self.config.num_key_value_heads, self.world_size
        if n <= hkv:
            return self._share(hkv)
        first = self.rank // (n // hkv)  # the KV head this rank's query heads read
        return first, first + 1

    @property
    def experts(self) -> tuple[int, int]:
        return self._share(self.config.num_experts)

    @property
    def vocab(self) -> tuple[int, int]:
        return self._share(self.config.vocab_size)

    def slices(self) -> dict[str, TensorSlice]:
        """Canonical tensor name -> this rank's slice; names left out are replicated (read whole)."""
        if self.world_size == 1:
            return {}
        c, d = self.config, self.config.head_dim
        (q0, q1), (k0, k1) = self.q_heads, self.kv_heads
        q_rows, kv_rows = c.num_attention_heads * d, c.num_key_value_heads * d
        qkv = TensorSlice(0, ((q0 * d, q1 * d), (q_rows + k0 * d, q_rows + k1 * d),
                              (q_rows + kv_rows + k0 * d, q_rows + kv_rows + k1 * d)))
        experts, vocab = TensorSlice(0, (self.experts,)), TensorSlice(0, (self.vocab,))
        by_leaf = {
            "attn.qkv.weight": qkv, "attn.qkv.bias": qkv, "attn.sinks": TensorSlice(0, (self.q_heads,)),
            "attn.out.weight": TensorSlice(1, ((q0 * d, q1 * d),)),
            **({"attn.out.bias": TensorSlice(0, ((0, c.hidden_size),), zeros=True)} if self.rank else {}),
            **{f"mlp.{leaf}": experts for leaf in ("mlp1_weight.blocks", "mlp1_weight.scales", "mlp1_bias",
                                                   "mlp2_weight.blocks", "mlp2_weight.scales", "mlp2_bias")},
        }
        out = {"embedding.weight": vocab, "unembedding.weight": vocab}
        for name in expected_tensors(c):
            if name.startswith("block."):
                leaf = name.split(".", 2)[2]
                if leaf in by_leaf:
                    out[name] = by_leaf[leaf]
        return out

    def shapes(self) -> dict[str, tuple]:
        """Canonical name -> this rank's shape of it (every tensor)."""
        slices = self.slices()
        return {name: slices[name].shape(shape) if name in slices else shape
                for name, (shape, _) in expected_tensors(self.config).items()}
