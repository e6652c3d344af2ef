"""Our kernels inside Hugging Face transformers' GptOssForCausalLM, in the convention of Liger-Kernel's
`apply_liger_kernel_to_*` and the kernels hub's `kernelize`: build the model as usual, then

    from gpt_oss_triton.model.integrations.transformers import apply
    apply(model, checkpoint="gpt-oss-20b")       # the directory the model was loaded from

and keep the rest (`generate()`, its DynamicCache, pipelines). Or, as `apply_liger_kernel_to_*` does, patch
transformers' gpt-oss classes before the model is built: `apply_to_classes()` (undone by `revert_classes()`).
`apply` swaps, in place on the built model:
- moe: each layer's router and experts -> fused routing and the MXFP4 grouped GEMMs, reading the checkpoint's
  packed `*_blocks` / `*_scales` again from `checkpoint` (transformers' MXFP4 loading either dequantizes them to
  bf16, `Mxfp4Config(dequantize=True)`, or swizzles them into its hub kernels' layout, Mxfp4GptOssMLP); the
  router's logits still reach transformers' output recorders (`output_router_logits`);
- rmsnorm: every GptOssRMSNorm -> our rmsnorm kernel;
- attention: registers the attention implementation "gpt_oss_triton" (sinks, sliding window, prefill and
  decode against transformers' dynamic cache) and selects it.

What it cannot run is refused with an exception naming the reason, never run some other way: a transformers
version other than 5.x (whose experts are called with top_k_index / top_k_weights), a model that is not
gpt-oss, a device Triton does not run on, MoE without bf16 activations, experts with no packed weights to read
(no `checkpoint`), a checkpoint whose experts are not the model's. Applying it twice changes nothing more.
Inference only: the kernels have no backward.
"""
import os
import re

import torch

from ...kernels._interpreter import interpreting
from ...loader import expected_tensors, load
from ...loader.sharding import TensorSlice

SUPPORTED_MAJOR = 5
SWIGLU_ALPHA = 1.702  # the kernels' constant
_EXPERT_TENSORS = ("mlp1_weight.blocks", "mlp1_weight.scales", "mlp1_bias", "mlp2_weight.blocks", "mlp2_weight.scales",
                   "mlp2_bias")


class UnsupportedModelError(ValueError):
    """apply() was given something our kernels cannot run; the message names what."""


def check_version(version: str | None = None) -> None:
    """Refuse a transformers whose major version is not SUPPORTED_MAJOR (its gpt-oss module interfaces differ)."""
    if version is None:
        import transformers
        version = transformers.__version__
    match = re.match(r"(\d+)\.", version)
    if not match or int(match.group(1)) != SUPPORTED_MAJOR:
        raise UnsupportedModelError(
            f"transformers {version} is not supported: gpt_oss_triton's integration takes transformers "
            f"{SUPPORTED_MAJOR}.x (experts called with top_k_index / top_k_weights; 4.x called them with "
            "router_indices and dense routing_weights)")


def check_device(model: torch.nn.Module) -> torch.device:
    """The model's one device, if our Triton kernels run there (a CUDA GPU; the CPU only in Triton's interpreter)."""
    devices = {p.device for p in model.parameters()}
    if len(devices) != 1:
        raise UnsupportedModelError(f"the model's parameters are on several devices {sorted(map(str, devices))}: "
                                    "gpt_oss_triton's integration takes a model on one GPU")
    device = devices.pop()
    if device.type == "cuda":
        return device
    if device.type == "cpu" and interpreting():
        return device
    hint = " (or set TRITON_INTERPRET=1 before importing triton: its interpreter, slow, for tests)" \
        if device.type == "cpu" else ""
    raise UnsupportedModelError(f"the model is on {device}, where Triton does not run: move it to a CUDA GPU "
                                f"first{hint}")


def _gpt_oss_layers(model: torch.nn.Module) -> list:
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssDecoderLayer
    layers = [m for m in model.modules() if isinstance(m, GptOssDecoderLayer)]
    if not layers:
        raise UnsupportedModelError(f"{type(model).__name__} has no GptOssDecoderLayer: not a transformers gpt-oss "
                                    "model (GptOssForCausalLM or GptOssModel)")
    return layers


def _read_experts(checkpoint, config) -> dict:
    """The checkpoint's packed expert blocks and scales and their biases (canonical names) as views of its
    memory-mapped files, every header checked, nothing else read."""
    path = os.fspath(checkpoint)

    def experts_only(ckpt_config):
        return {name: TensorSlice(0, (), zeros=True) for name in expected_tensors(ckpt_config)
                if not name.endswith(_EXPERT_TENSORS)}

    ckpt = load(path, device="cpu", select=experts_only)
    c = ckpt.config
    ours = (config.num_hidden_layers, config.num_local_experts, config.hidden_size, config.intermediate_size)
    theirs = (c.num_hidden_layers, c.num_experts, c.hidden_size, c.intermediate_size)
    if ours != theirs:
        raise UnsupportedModelError(f"checkpoint {path} holds (layers, experts, hidden, intermediate) {theirs}, the "
                                    f"model {ours}: not the checkpoint this model was loaded from")
    return {name: t for name, t in ckpt.tensors.items() if name.endswith(_EXPERT_TENSORS)}


def _check_same_experts(layer: int, experts, tensors: dict, path) -> None:
    """The checkpoint's layer holds the model's experts: the same biases, and where the model has its weights dense,
    the same expert 0 (transformers dequantizes exactly: MXFP4 values are exact in bf16). Biases are compared in
    the model's dtype, which holds the stored bf16 exactly."""
    from ...kernels.mxfp4 import mxfp4_dequantize
    p = f"block.{layer}.mlp."
    for hf, ours in (("gate_up_proj", "mlp1"), ("down_proj", "mlp2")):
        bias = getattr(experts, hf + "_bias")
        same = torch.equal(tensors[p + ours + "_bias"].to(bias.dtype), bias.data.cpu())
        dense = getattr(experts, hf, None)
        if same and isinstance(dense, torch.nn.Parameter) and dense.dim() == 3 and dense.is_floating_point():
            want = mxfp4_dequantize(tensors[p + ours + "_weight.blocks"][0], tensors[p + ours + "_weight.scales"][0],
                                    torch.float32).T
            same = torch.equal(want.to(dense.dtype), dense[0].data.cpu())
        if not same:
            raise UnsupportedModelError(f"checkpoint {path}: layer {layer}'s experts ({hf}) are not the model's: "
                                        "pass the directory the model was loaded from")


def _swap_moe(layers: list, config, checkpoint, device: torch.device) -> None:
    from transformers.integrations.mxfp4 import Mxfp4GptOssMLP
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssMLP

    from .hf_modules import TritonGptOssExperts, TritonGptOssMLP, TritonGptOssTopKRouter
    # transformers' own MoE blocks: dense experts, or (MXFP4 loaded for its hub kernels) Mxfp4GptOssMLP
    blocks = (GptOssMLP, TritonGptOssMLP, Mxfp4GptOssMLP)
    todo = [(i, layer) for i, layer in enumerate(layers) if not isinstance(layer.mlp.experts, TritonGptOssExperts)]
    if not todo:
        return
    for i, layer in todo:
        if type(layer.mlp) not in blocks or not hasattr(layer.mlp.experts, "down_proj_bias"):
            raise UnsupportedModelError(f"layer {i}'s MoE block is {type(layer.mlp).__name__} with "
                                        f"{type(layer.mlp.experts).__name__}, not one of transformers' gpt-oss MoE "
                                        "blocks: apply before other patches, or pass moe=False")
    if checkpoint is None:
        kind = type(todo[0][1].mlp.experts).__name__
        raise UnsupportedModelError(
            f"the model's experts ({kind}) hold no packed MXFP4 weights our kernels can read: transformers "
            "dequantized them to bf16 when it loaded the model (or swizzled them for its hub kernels). Pass "
            "checkpoint=<the directory it was loaded from> to read the packed blocks and scales, or moe=False")
    if getattr(config, "swiglu_alpha", SWIGLU_ALPHA) != SWIGLU_ALPHA:
        raise UnsupportedModelError(f"config.swiglu_alpha {config.swiglu_alpha}: the MoE kernels compute swiglu "
                                    f"with alpha {SWIGLU_ALPHA}")
    tensors = _read_experts(checkpoint, config)
    for i, layer in todo:  # every layer checked before any is swapped: a refusal leaves the model as it was
        _check_same_experts(i, layer.mlp.experts, tensors, checkpoint)
    for i, layer in todo:  # one layer's packed experts on the device at a time, its old experts then freed
        p = f"block.{i}.mlp."
        old = layer.mlp.experts
        w1, s1, w2, s2 = (tensors[p + name].to(device) for name in ("mlp1_weight.blocks", "mlp1_weight.scales",
                                                                     "mlp2_weight.blocks", "mlp2_weight.scales"))
        layer.mlp.experts = TritonGptOssExperts(w1, s1, old.gate_up_proj_bias.data, w2, s2, old.down_proj_bias.data,
                                                config.swiglu_limit)
        layer.mlp.router.__class__ = TritonGptOssTopKRouter
        layer.mlp.__class__ = TritonGptOssMLP


def _swap_rmsnorm(model: torch.nn.Module) -> None:
    from .hf_modules import TritonGptOssRMSNorm
    original = TritonGptOssRMSNorm.__base__  # transformers' class, also while apply_to_classes has its name on ours
    for module in model.modules():
        if type(module) is original:
            module.__class__ = TritonGptOssRMSNorm


def register_attention() -> str:
    """Register our attention with transformers, no model needed: `from_pretrained(...,
    attn_implementation=register_attention())` then builds the model with it. Returns its name."""
    check_version()
    from .hf_attention import register
    return register()


def apply(model: torch.nn.Module, checkpoint=None, *, moe: bool = True, rmsnorm: bool = True,
          attention: bool = True) -> torch.nn.Module:
    """Swap our kernels into a built transformers gpt-oss model, in place; returns the model.

    checkpoint: the gpt-oss directory (either layout) the model was loaded from, whose packed MXFP4 experts the
    MoE kernels read (needed with moe=True). moe / rmsnorm / attention: which parts to swap."""
    check_version()
    layers = _gpt_oss_layers(model)
    device = check_device(model)
    config = layers[0].self_attn.config
    if moe:
        dtype = layers[0].mlp.router.weight.dtype
        if dtype != torch.bfloat16:
            raise UnsupportedModelError(f"the model runs {dtype}: the MoE kernels take bf16 activations (load it "
                                        "with dtype=torch.bfloat16), or pass moe=False")
        _swap_moe(layers, config, checkpoint, device)
    if rmsnorm:
        _swap_rmsnorm(model)
    if attention:
        model.set_attn_implementation(register_attention())
    return model


_MISSING = object()
_patched: list = []  # (owner, attribute, what it held before: _MISSING where it inherited it)


def _patch(owner, name: str, value) -> None:
    _patched.append((owner, name, owner.__dict__.get(name, _MISSING)))
    setattr(owner, name, value)


def revert_classes() -> None:
    """Undo apply_to_classes: transformers' gpt-oss classes as they were (models built meanwhile keep ours)."""
    while _patched:
        owner, name, old = _patched.pop()
        if old is _MISSING:
            delattr(owner, name)
        else:
            setattr(owner, name, old)


def apply_to_classes(*, moe: bool = True, rmsnorm: bool = True, attention: bool = True) -> None:
    """Patch transformers' gpt-oss classes so models built afterwards get our kernels with no further call:
    rmsnorm: every GptOssRMSNorm built is ours; attention: ours is registered and is gpt-oss models' default
    (an explicit `attn_implementation=` still wins); moe: `GptOssForCausalLM.from_pretrained(dir)` and
    `GptOssModel.from_pretrained(dir)` end with `apply(model, checkpoint=dir)`, the MoE kernels reading the packed
    experts from that local directory. A model built from a config alone keeps transformers' MoE (no packed
    weights to read) until `apply(model, checkpoint=...)`. Calling it again replaces the earlier patch."""
    check_version()
    from transformers.models.gpt_oss import modeling_gpt_oss as hf

    from .hf_modules import TritonGptOssRMSNorm
    revert_classes()
    if rmsnorm:
        _patch(hf, "GptOssRMSNorm", TritonGptOssRMSNorm)  # the name the decoder layers and the model build
    if attention:
        name = register_attention()
        correct = hf.GptOssPreTrainedModel.get_correct_attn_implementation

        def default_ours(self, requested_attention, is_init_check=False):
            return correct(self, name if requested_attention is None else requested_attention, is_init_check)
        _patch(hf.GptOssPreTrainedModel, "get_correct_attn_implementation", default_ours)
    if moe:
        for cls in (hf.GptOssForCausalLM, hf.GptOssModel):
            _patch(cls, "from_pretrained", classmethod(_from_pretrained_with_moe(cls.from_pretrained.__func__)))


def _from_pretrained_with_moe(load):
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        path = os.fspath(pretrained_model_name_or_path)
        how = "or call apply_to_classes(moe=False), then apply(model, checkpoint=<its directory>) on the model"
        if not os.path.isdir(path):
            raise UnsupportedModelError(
                f"apply_to_classes(moe=True): {path!r} is not a local directory, and the MoE kernels read the "
                f"checkpoint's packed experts from its files: load from a downloaded copy ({how})")
        model = load(cls, path, *args, **kwargs)
        try:
            return apply(model, checkpoint=path, rmsnorm=False, attention=False)
        except UnsupportedModelError as e:
            raise UnsupportedModelError(f"apply_to_classes(moe=True), on the model loaded from {path}: {e} (load "
                                        f"it on the GPU with device_map=..., {how})") from e
    return from_pretrained
