"""The modules `transformers.apply` puts into a Hugging Face GptOssForCausalLM: RMSNorm, the router and the experts
on our kernels. Each is a subclass of the module it replaces (same parameters, `isinstance` still holds, so
transformers' output recorders and weight init still find them), except the experts, whose weights are the
checkpoint's packed MXFP4 blocks and scales instead of transformers' dense (dequantized) ones.

transformers' experts interface (v5): experts(hidden_states [T, H], top_k_index [T, K], top_k_weights [T, K]) ->
[T, H]. Our router also hands its fused routing's bookkeeping (which grouped row is which token and slot) to the
experts, so the MLP does not rebuild it; called with indices alone, the experts build it in torch.
"""
import torch
from torch import nn
from transformers.models.gpt_oss.modeling_gpt_oss import GptOssMLP, GptOssRMSNorm, GptOssTopKRouter

from ...kernels.moe_gemm import moe_mlp1, moe_mlp2
from ...kernels.mxfp4 import permute_k
from ...kernels.rmsnorm import rmsnorm
from ...kernels.routing import RoutingData, routing
from ..moe import RepackedMXFP4Weight


class TritonGptOssRMSNorm(GptOssRMSNorm):
    """transformers' RMSNorm (fp32 weight, math in fp32, output in the input's dtype) as one rmsnorm launch."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return rmsnorm(hidden_states, self.weight, self.variance_epsilon)


class RouterOutput(tuple):
    """(router_logits [T, E], router_scores [T, K], router_indices [T, K]) as transformers' router returns them,
    carrying the fused routing's RoutingData in `.routing`."""
    routing: RoutingData


class TritonGptOssTopKRouter(GptOssTopKRouter):
    """Router GEMM, top-k, softmax over the k and the experts' pair bookkeeping in one routing launch (decode)."""

    def forward(self, hidden_states: torch.Tensor) -> RouterOutput:
        r = routing(hidden_states.contiguous(), self.weight, self.bias, self.top_k)
        out = RouterOutput((r.logits, r.weights, r.indices))
        out.routing = r
        return out


def routing_from_top_k(top_k_index: torch.Tensor, top_k_weights: torch.Tensor, n_experts: int) -> RoutingData:
    """The experts' bookkeeping for routes chosen elsewhere: pairs grouped by expert, stably (kernels/routing.py)."""
    T, K = top_k_index.shape
    experts = top_k_index.reshape(-1).long()
    if T and not bool(((experts >= 0) & (experts < n_experts)).all()):
        raise ValueError(f"experts: top_k_index holds ids outside [0, {n_experts}) (expert parallelism is not "
                         "supported by the gpt_oss_triton experts)")
    gather = torch.argsort(experts, stable=True)
    scatter = torch.empty_like(gather)
    scatter[gather] = torch.arange(T * K, device=gather.device)
    counts = torch.bincount(experts, minlength=n_experts).int()
    # No kernel reads the logits: a broadcast zero stands in for them, no memory.
    logits = torch.zeros((), dtype=torch.bfloat16, device=top_k_index.device).expand(T, n_experts)
    offsets = (torch.cumsum(counts, 0) - counts).int()
    return RoutingData(logits, top_k_index.int(), top_k_weights.float(), counts, offsets, gather.int(), scatter.int())


class TritonGptOssExperts(nn.Module):
    """The experts on the checkpoint's packed MXFP4 weights (repacked for the kernels at construction): mlp1 with
    its bias and swiglu, mlp2 with its bias and the weighted combine, two grouped GEMM launches at decode.

    mlp1_weight / mlp2_weight: RepackedMXFP4Weight of blocks [E, 2I, H/32, 16] / [E, H, I/32, 16] as the
    checkpoint stores `gate_up_proj_blocks` / `down_proj_blocks` (state_dict gives that layout back);
    gate_up_proj_bias [E, 2I], down_proj_bias [E, H] bf16 (transformers' names)."""

    def __init__(self, gate_up_blocks: torch.Tensor, gate_up_scales: torch.Tensor, gate_up_bias: torch.Tensor,
                 down_blocks: torch.Tensor, down_scales: torch.Tensor, down_bias: torch.Tensor, swiglu_limit: float):
        super().__init__()
        E, two_i, g, _ = gate_up_blocks.shape
        H, I = g * 32, two_i // 2
        self.num_experts, self.hidden_size, self.intermediate_size, self.limit = E, H, I, swiglu_limit
        self.mlp1_weight = RepackedMXFP4Weight(E, 2 * I, H, device="meta")
        self.mlp2_weight = RepackedMXFP4Weight(E, H, I, device="meta")
        self.mlp1_weight.load_state_dict({"blocks": gate_up_blocks, "scales": gate_up_scales}, assign=True)
        self.mlp2_weight.load_state_dict({"blocks": down_blocks, "scales": down_scales}, assign=True)
        self.gate_up_proj_bias = nn.Parameter(gate_up_bias.to(torch.bfloat16).contiguous(), requires_grad=False)
        self.down_proj_bias = nn.Parameter(down_bias.to(torch.bfloat16).contiguous(), requires_grad=False)

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor,
                routing: RoutingData | None = None) -> torch.Tensor:
        """hidden_states [T, H] bf16, top_k_index [T, K], top_k_weights [T, K] -> [T, H] bf16."""
        r = routing if routing is not None else routing_from_top_k(top_k_index, top_k_weights, self.num_experts)
        fast = self.mlp1_weight.fast_decode and self.mlp2_weight.fast_decode
        a = moe_mlp1(permute_k(hidden_states.contiguous()), r, self.mlp1_weight.blocks, self.mlp1_weight.scales,
                     self.gate_up_proj_bias, self.limit, fast=fast)
        return moe_mlp2(a, r, self.mlp2_weight.blocks, self.mlp2_weight.scales, self.down_proj_bias, fast=fast)


class TritonGptOssMLP(GptOssMLP):
    """transformers' MoE block (router + experts) with our router's bookkeeping passed on to our experts."""

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = hidden_states.shape
        x = hidden_states.reshape(-1, shape[-1])
        out = self.router(x)
        _, scores, indices = out
        y = self.experts(x, indices, scores, routing=getattr(out, "routing", None))
        return y.view(shape), scores
