"""The trainable form of the gpt-oss graph, and its export to a checkpoint every backend loads.

`TrainableGptOss` is the reference `Transformer` (the same attention with sinks, sliding and full layers, GQA,
YaRN, norms; their parameters already carry the checkpoint's names) whose MoE blocks hold dense fp32 experts.
With `qat` the forward uses each expert weight as MXFP4 would store it (straight-through: the gradient
passes to the dense weight), so the exported model computes what was trained. `export` quantizes the experts
and writes the Hugging Face layout with the tokenizer beside it.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from ...kernels.mxfp4 import mxfp4_dequantize, mxfp4_quantize
from ...kernels.reference import swiglu_ref
from ..config import GptOssConfig
from ..reference import AttentionBlock, RMSNorm, Transformer, TransformerBlock


def fake_mxfp4(w: torch.Tensor) -> torch.Tensor:
    """w as MXFP4 rounds it (blocks of 32 along the last dim), with the gradient of the identity."""
    with torch.no_grad():
        q = mxfp4_dequantize(*mxfp4_quantize(w), torch.float32)
    return w + (q - w).detach()


class DenseMoE(nn.Module):
    """The MoE block with dense experts: every expert runs on every token (they are few and narrow) and the
    top-k softmax weights pick, so it trains without gathers. Names as MLPBlock's, the weights `*_dense`."""

    qat = True

    def __init__(self, config: GptOssConfig, device=None):
        super().__init__()
        E, H, I = config.num_experts, config.hidden_size, config.intermediate_size
        self.experts_per_token, self.swiglu_limit = config.experts_per_token, config.swiglu_limit
        self.norm = RMSNorm(H, config.rms_norm_eps, device=device)
        self.gate = nn.Linear(H, E, device=device)
        self.mlp1_dense = nn.Parameter(torch.randn(E, 2 * I, H, device=device) / math.sqrt(H))
        self.mlp1_bias = nn.Parameter(torch.zeros(E, 2 * I, device=device))
        self.mlp2_dense = nn.Parameter(torch.randn(E, H, I, device=device) / math.sqrt(I) / 2)
        self.mlp2_bias = nn.Parameter(torch.zeros(E, H, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.norm(x)
        logits = self.gate(t)
        top, index = torch.topk(logits, self.experts_per_token, dim=-1)
        weights = torch.zeros_like(logits).scatter(-1, index, torch.softmax(top, dim=-1))
        w1, w2 = (fake_mxfp4(self.mlp1_dense), fake_mxfp4(self.mlp2_dense)) if self.qat else \
            (self.mlp1_dense, self.mlp2_dense)
        h = torch.einsum("...h,eih->...ei", t, w1) + self.mlp1_bias
        y = torch.einsum("...ei,ehi->...eh", swiglu_ref(h, self.swiglu_limit), w2) + self.mlp2_bias
        return x + torch.einsum("...eh,...e->...h", y, weights)


class _Block(TransformerBlock):
    def __init__(self, config, layer, dtype=torch.float32, device=None):
        nn.Module.__init__(self)
        self.attn = AttentionBlock(config, layer, dtype, device)
        self.mlp = DenseMoE(config, device)


class TrainableGptOss(Transformer):
    """forward(tokens [B, T]) -> logits [B, T, V] in fp32, trainable."""

    block_class = _Block

    def __init__(self, config: GptOssConfig, seed: int = 0, qat: bool = True):
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            super().__init__(config, dtype=torch.float32, device="cpu")
            nn.init.normal_(self.embedding.weight, std=0.02)
            nn.init.normal_(self.unembedding.weight, std=0.02)
            for block in self.block:
                block.mlp.qat = qat
                nn.init.zeros_(block.attn.qkv.bias)
                nn.init.zeros_(block.attn.out.bias)
                block.attn.out.weight.data /= math.sqrt(2 * config.num_hidden_layers)
                block.mlp.mlp2_dense.data /= math.sqrt(2 * config.num_hidden_layers)

    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        """Canonical name -> tensor as a checkpoint stores it (bf16; the experts MXFP4 blocks and scales)."""
        out = {}
        for name, t in self.state_dict().items():
            t = t.detach()
            if name.endswith("_dense"):
                blocks, scales = mxfp4_quantize(t)
                stem = name.removesuffix("_dense") + "_weight"
                out[stem + ".blocks"], out[stem + ".scales"] = blocks, scales
            else:
                out[name] = t.to(torch.bfloat16)
        return out


def export(model: TrainableGptOss, out: str | Path, tokenizer) -> Path:
    """Write `model` as a Hugging Face layout checkpoint (config.json, model.safetensors, tokenizer.json)."""
    from ...loader import make_checkpoint

    out = make_checkpoint(out, model.config, tensors=model.checkpoint_tensors(), tokenizer=tokenizer, progress=False)
    # generation in other libraries stops at this tokenizer's ids, not o200k_harmony's
    path = out / "config.json"
    config = json.loads(path.read_text())
    config.update(eos_token_id=tokenizer.token_id("<|return|>"), pad_token_id=tokenizer.token_id("<|endoftext|>"))
    path.write_text(json.dumps(config, indent=2) + "\n")
    return out
