"""Peers that benchmarks put beside ours in the same run, each skipped by name with the reason when it can't run.

- "torch": the plain-torch reference op or model (kernels.reference, the torch backend);
- "torch.compile": the same, compiled (`compiled`);
- "transformers": Hugging Face's GptOssForCausalLM on our weights (`hf_model`), with the MXFP4 experts
  dequantized to the model dtype, since its MXFP4 kernels can't be assumed to be installed.
A benchmark names its implementation with an `impl` param or extra_info key: "ours" (the kernel benchmarks
say "triton") or the peer's name; the report sets peer rows beside ours by it.
"""
import pytest
import torch

from gpt_oss_triton.kernels.mxfp4 import mxfp4_dequantize
from gpt_oss_triton.loader.names import expected_tensors, hf_names

OURS = "ours"
PEERS = ("torch", "torch.compile", "transformers")


def skip_peer(peer: str, reason: str):
    pytest.skip(f"peer {peer}: {reason}")


def _why(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def compiled(fn, *args, **kwargs):
    """torch.compile(fn), called once on the arguments so that compiling happens here and not in the timing;
    returns a zero-argument callable. Skips the peer if compiling or that first call fails."""
    try:
        fn_c = torch.compile(fn)
        fn_c(*args, **kwargs)
    except Exception as e:  # any compiler error means "this peer can't run here", not a failed benchmark
        skip_peer("torch.compile", _why(e))
    return lambda: fn_c(*args, **kwargs)


def transformers_or_skip():
    """The transformers module, if it is installed and has gpt-oss; else skip the peer."""
    try:
        import transformers
        transformers.GptOssForCausalLM  # noqa: B018 (older releases lack it)
    except (ImportError, AttributeError) as e:
        skip_peer("transformers", f"not installed or without gpt-oss ({_why(e)})")
    return transformers


def hf_config(config, transformers):
    """transformers' GptOssConfig for our config: the checkpoint's config.json, less MXFP4 and the dtype."""
    d = config.to_hf_dict()
    # No MXFP4 (we hand over dequantized weights), no dtype (the caller picks)
    for key in ("quantization_config", "torch_dtype"):
        d.pop(key)
    return transformers.GptOssConfig(**d)


def hf_tensors(state: dict, config, dtype: torch.dtype):
    """Yield (Hugging Face name, tensor) from our canonical state dict: qkv split into q, k, v rows; experts
    dequantized to `dtype` as [E, out, in] (transformers may keep them transposed: see `hf_model`)."""
    for name, parts in hf_names(config).items():
        if name.endswith(".scales"):
            continue  # read with its blocks
        if name.endswith(".blocks"):
            hf_name = parts[0][0].removesuffix("_blocks")
            yield hf_name, mxfp4_dequantize(state[name], state[name.removesuffix("blocks") + "scales"], dtype)
            continue
        row = 0
        for hf_name, rows in parts:
            yield hf_name, state[name][row:row + rows]
            row += rows


def hf_param_count(config) -> int:
    """Parameters of the dequantized model (an MXFP4 block of 16 bytes holds 32 weights)."""
    count = 0
    for name, (shape, _) in expected_tensors(config).items():
        if not name.endswith(".scales"):
            count += torch.Size(shape).numel() * (2 if name.endswith(".blocks") else 1)
    return count


@torch.no_grad()
def hf_model(model, dtype: torch.dtype | None = None, attn_implementation: str = "eager"):
    """GptOssForCausalLM on `model`'s device holding `model`'s weights (our GptOss, any backend).

    Filled one tensor at a time, so the peak is our model + theirs + one layer's dequantized experts.
    Eager attention: the one implementation with sinks that needs no extra package.
    """
    transformers = transformers_or_skip()
    dtype = dtype or model.dtype
    device = model.embedding.weight.device
    if device.type == "cuda":
        need, free = hf_param_count(model.config) * dtype.itemsize, torch.cuda.mem_get_info(device)[0]
        if need > 0.9 * free:
            skip_peer("transformers", f"its dequantized weights need {need / 1e9:.0f} GB, {free / 1e9:.0f} GB free")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            hf = transformers.GptOssForCausalLM._from_config(hf_config(model.config, transformers),
                                                             attn_implementation=attn_implementation)
    finally:
        torch.set_default_dtype(previous)
    hf.to(device)  # a no-op unless a transformers release built it elsewhere despite the device context
    target = hf.state_dict()
    # Experts as [E, in, out] (x @ W) or [E, out, in]: told apart by gate_up, as in and out may be equal in down.
    E, H, I = model.config.num_experts, model.config.hidden_size, model.config.intermediate_size
    transposed = tuple(target["model.layers.0.mlp.experts.gate_up_proj"].shape) == (E, H, 2 * I) and H != 2 * I
    loaded = set()
    for name, t in hf_tensors(model.state_dict(), model.config, dtype):
        if name not in target:
            raise ValueError(f"transformers' GptOssForCausalLM has no tensor {name!r}")
        dst = target[name]
        if t.dim() == 3 and transposed:
            t = t.transpose(1, 2)
        if dst.shape != t.shape:
            raise ValueError(f"{name}: transformers expects shape {tuple(dst.shape)}, ours is {tuple(t.shape)}")
        dst.copy_(t)
        loaded.add(name)
    missing = sorted(set(target) - loaded)
    if missing:
        raise ValueError(f"transformers' GptOssForCausalLM has tensors we did not fill: {missing[:5]}")
    return hf.eval().requires_grad_(False)
