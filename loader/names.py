"""Tensor names, shapes and dtypes of a gpt-oss checkpoint, and the Hugging Face <-> original name map.

The canonical names are the original layout's (`block.{i}.attn.qkv.weight`); they are also the
reference model's state_dict keys. On disk every tensor is bf16 except the MXFP4 blocks and scales.
"""
import torch

from ..model.config import GptOssConfig

MXFP4_SUFFIXES = (".blocks", ".scales")


def is_mxfp4(name: str) -> bool:
    return name.endswith(MXFP4_SUFFIXES)


def expected_tensors(config: GptOssConfig) -> dict[str, tuple[tuple, torch.dtype]]:
    """Canonical name -> (shape, dtype on disk), in the order the original checkpoint lists them."""
    H, I, E, D = config.hidden_size, config.intermediate_size, config.num_experts, config.head_dim
    bf16, u8 = torch.bfloat16, torch.uint8
    out = {"embedding.weight": ((config.vocab_size, H), bf16)}
    for i in range(config.num_hidden_layers):
        p = f"block.{i}."
        out.update({
            p + "attn.norm.scale": ((H,), bf16),
            p + "attn.qkv.weight": ((config.qkv_dim, H), bf16),
            p + "attn.qkv.bias": ((config.qkv_dim,), bf16),
            p + "attn.sinks": ((config.num_attention_heads,), bf16),
            p + "attn.out.weight": ((H, config.num_attention_heads * D), bf16),
            p + "attn.out.bias": ((H,), bf16),
            p + "mlp.norm.scale": ((H,), bf16),
            p + "mlp.gate.weight": ((E, H), bf16),
            p + "mlp.gate.bias": ((E,), bf16),
            p + "mlp.mlp1_weight.blocks": ((E, 2 * I, H // 32, 16), u8),
            p + "mlp.mlp1_weight.scales": ((E, 2 * I, H // 32), u8),
            p + "mlp.mlp1_bias": ((E, 2 * I), bf16),
            p + "mlp.mlp2_weight.blocks": ((E, H, I // 32, 16), u8),
            p + "mlp.mlp2_weight.scales": ((E, H, I // 32), u8),
            p + "mlp.mlp2_bias": ((E, H), bf16),
        })
    out["norm.scale"] = ((H,), bf16)
    out["unembedding.weight"] = ((config.vocab_size, H), bf16)
    return out


_HF_GLOBAL = {"embedding.weight": "model.embed_tokens.weight", "norm.scale": "model.norm.weight",
              "unembedding.weight": "lm_head.weight"}
_HF_LAYER = {
    "attn.norm.scale": "input_layernorm.weight", "attn.sinks": "self_attn.sinks",
    "attn.out.weight": "self_attn.o_proj.weight", "attn.out.bias": "self_attn.o_proj.bias",
    "mlp.norm.scale": "post_attention_layernorm.weight",
    "mlp.gate.weight": "mlp.router.weight", "mlp.gate.bias": "mlp.router.bias",
    "mlp.mlp1_weight.blocks": "mlp.experts.gate_up_proj_blocks", "mlp.mlp1_weight.scales": "mlp.experts.gate_up_proj_scales",
    "mlp.mlp1_bias": "mlp.experts.gate_up_proj_bias",
    "mlp.mlp2_weight.blocks": "mlp.experts.down_proj_blocks", "mlp.mlp2_weight.scales": "mlp.experts.down_proj_scales",
    "mlp.mlp2_bias": "mlp.experts.down_proj_bias",
}
_HF_QKV = ("q_proj", "k_proj", "v_proj")


def hf_names(config: GptOssConfig) -> dict[str, list[tuple[str, int]]]:
    """Canonical name -> the Hugging Face tensors it is made of, each with its row count (qkv = q, k, v rows)."""
    q_rows = config.num_attention_heads * config.head_dim
    kv_rows = config.num_key_value_heads * config.head_dim
    out = {}
    for name, (shape, _) in expected_tensors(config).items():
        if name in _HF_GLOBAL:
            out[name] = [(_HF_GLOBAL[name], shape[0])]
            continue
        _, layer, rest = name.split(".", 2)
        prefix = f"model.layers.{layer}."
        if rest in ("attn.qkv.weight", "attn.qkv.bias"):
            kind = rest.rsplit(".", 1)[1]
            out[name] = [(f"{prefix}self_attn.{p}.{kind}", rows) for p, rows in zip(_HF_QKV, (q_rows, kv_rows, kv_rows))]
        else:
            out[name] = [(prefix + _HF_LAYER[rest], shape[0])]
    return out
