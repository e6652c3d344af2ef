"""Parameter counts as the model card gives them, read off a model's tensors (works on the meta device)."""
from torch import nn

_EXPERT_SUFFIXES = ("mlp1_weight.blocks", "mlp1_bias", "mlp2_weight.blocks", "mlp2_bias")


def _logical_numel(name: str, numel: int) -> int:
    if name.endswith(".scales"):
        return 0  # E8M0 scales are storage, not parameters
    if name.endswith(".blocks"):
        return 2 * numel  # two 4-bit values per byte
    return numel


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, active per token). Active counts the chosen experts of each layer with their biases, the router,
    attention, norms and embedding, and leaves the unembedding out (the model card's convention)."""
    config = model.config
    total = active = 0
    for name, t in model.state_dict(keep_vars=True).items():
        n = _logical_numel(name, t.numel())
        total += n
        if name.startswith("unembedding."):
            continue
        if name.endswith(_EXPERT_SUFFIXES):
            n = n * config.experts_per_token // config.num_experts
        active += n
    return total, active
