"""Precision against OpenAI's fp32 logits (tests/data/golden): each bf16 backend's distance from the official
fp32 reference on the golden prompt (prefill) and on the 8 greedy decode steps after it (decode_step for the Triton
backend, the path the engine runs).

The figures, measured on the CPU (Triton in its interpreter, rounding to nearest even as a GPU does; the GPU's
bf16 P in prefill attention is fp32 there):

    backend (bf16)          path     mean |d|  max |d|  argmax agreement
    reference (torch)       prompt   0.0589    0.492    31/32
    reference (torch)       decode   0.0483    0.282    8/8
    Triton before issue 16  prompt   0.0771    1.086    28/32   (the interpreter truncated fp32 -> bf16)
    Triton before issue 16  decode   0.0551    0.285    6/8
    Triton                  prompt   0.0689    1.737    31/32
    Triton                  decode   0.0632    0.368    7/8     (per step 1.1-1.5x the reference's distance)

On this tiny model a bf16 run's distance is dominated by a few router flips (4th/5th expert within bf16 noise:
the golden README); Triton's max |d| on the prompt is one token (11) whose layer-2 router flips, where the
residual stream before it is as close to fp32 as the reference's. Eight decode steps of one prompt are too few
to rank two bf16 paths: over 4 rows of random tokens, 40 prompt positions and 40 decode steps each (against our
fp32 reference, which equals OpenAI's to 2e-5; teacher-forced as below, at that size), Triton is the closer one:

    backend (bf16)          prompt mean |d|   decode mean |d|   decode argmax agreement
    reference (torch)       0.0644            0.0930            89.4%
    Triton                  0.0538            0.0587            95.0%

That is the precision plan (issue 16): where the reference rounds to bf16 between ops, the Triton decode path
keeps fp32 at no cost in bandwidth, as these stay in registers: q and k through the rotation (decode_qkv rounds
once after RoPE; the reference rounds the projection, then rotates in bf16), mlp1's output into swiglu, the
experts' outputs through the weighted combine and the residual add (one rounding, in mlp2's epilogue), the out
projection with its bias and residual (one rounding), and the logits (fp32 from the unembedding). It rounds where
the reference does: the residual stream, the norms' outputs, router logits (before the top-k, as OpenAI's bf16
code), q/k/v as stored, the KV cache, the attention output and swiglu's output are bf16 in both.
`test_triton_is_closer_to_fp32_than_the_reference` guards it on a smaller run (figures in its docstring).
The bounds below leave a margin over the figures above.
"""
import pytest
import torch
from safetensors.torch import load_file

from gpt_oss_triton.kernels.reference import attention_ref, rope_ref
from gpt_oss_triton.model import GptOss

torch.set_grad_enabled(False)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# (mean, max, minimum argmax agreement) bounds per (backend, path), with a margin over the figures above.
BOUNDS = {
    ("torch", "prompt"): (0.065, 0.6, 30),
    ("torch", "decode"): (0.055, 0.35, 8),
    ("triton", "prompt"): (0.08, 2.0, 29),
    ("triton", "decode"): (0.07, 0.42, 7),
}


@pytest.fixture(scope="module")
def golden(golden_dir):
    return load_file(golden_dir / "official_fp32.safetensors")


def _distance(logits: torch.Tensor, expected: torch.Tensor) -> tuple[float, float, int]:
    diff = (logits.float().cpu() - expected).abs()
    return diff.mean().item(), diff.max().item(), int((logits.float().cpu().argmax(-1) == expected.argmax(-1)).sum())


def _run(model, golden, capture_layer0: list) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt logits, decode logits): one forward over the golden prompt, then a prefill of it and the golden
    greedy tokens one decode step at a time (decode_step where the model has it: the engine's path). The output
    of layer 0's attention block is appended to capture_layer0 at every step."""
    attn = model.block[0].attn
    hook = attn.register_forward_hook(lambda mod, args, out: capture_layer0.append(out.reshape(-1, out.shape[-1])))
    decode = getattr(attn, "decode", None)
    if decode is not None:
        def recorded(*args, **kwargs):
            out = decode(*args, **kwargs)
            capture_layer0.append(out)
            return out

        attn.decode = recorded
    try:
        tokens = golden["tokens"][None].to(DEVICE)
        prompt = model(tokens)[0]
        capture_layer0.clear()
        cache = model.new_cache(1, 64)
        steps = [model(tokens, cache)[0, -1]]
        for token in golden["generated"][:-1].tolist():
            t = torch.tensor([token], device=DEVICE)
            if hasattr(model, "decode_step"):
                steps.append(model.decode_step(t, torch.ones(1, dtype=torch.int32, device=DEVICE), cache)[0])
            else:
                steps.append(model(t[None], cache)[0, -1])
    finally:
        hook.remove()
        if decode is not None:
            del attn.decode
    return prompt, torch.stack(steps)


@pytest.fixture(scope="module")
def figures(golden_dir, golden) -> dict:
    """backend -> {"prompt": (mean, max, argmax), "decode": (...), "layer0": (prompt mean, decode mean)}, where
    layer0 is the distance of layer 0's attention output from fp32's (32 prompt rows, then 7 decode steps)."""
    ref = GptOss.from_pretrained(golden_dir / "tiny_seed7/hf", backend="torch", dtype=torch.float32, device=DEVICE)
    captured = []
    _run(ref, golden, captured)
    fp32_layer0 = torch.cat(captured).float().cpu()
    out = {}
    for backend in ("torch", "triton"):
        model = GptOss.from_pretrained(golden_dir / "tiny_seed7/hf", backend=backend, device=DEVICE)
        captured = []
        prompt, decode = _run(model, golden, captured)
        layer0 = (torch.cat(captured).float().cpu() - fp32_layer0).abs()
        out[backend] = {"prompt": _distance(prompt, golden["logits"]), "decode": _distance(decode, golden["gen_logits"]),
                        "layer0": (layer0[:32].mean().item(), layer0[32:].mean().item())}
    return out


def _teacher_forced(model, tokens: torch.Tensor, prompt: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits of the prefill of tokens[:, :prompt], logits of each later position decoded one step at a time
    after it, the next token given: decode_step where the model has it)."""
    B, T = tokens.shape
    cache = model.new_cache(B, T)
    prefill = model(tokens[:, :prompt], cache)
    steps = [prefill[:, -1]]
    for s in range(prompt, T - 1):
        if hasattr(model, "decode_step"):
            steps.append(model.decode_step(tokens[:, s], torch.ones(B, dtype=torch.int32, device=DEVICE), cache))
        else:
            steps.append(model(tokens[:, s:s + 1], cache)[:, -1])
    return prefill.float(), torch.stack(steps, 1).float()


def test_triton_is_closer_to_fp32_than_the_reference(golden_dir):
    """Many positions, so router flips average out: 8 rows of random tokens, a 16-token prompt and 12 decode
    steps, each backend in bf16 against the golden checkpoint in fp32. Triton's mean distance is below the
    reference's on the prompt and on the decode steps (measured on the CPU: prompt 0.0477 vs 0.0591, decode
    0.0532 vs 0.0636; with 4 rows the decode margin was 6%, too thin to guard)."""
    path = golden_dir / "tiny_seed7/hf"
    f32 = GptOss.from_pretrained(path, backend="torch", dtype=torch.float32, device=DEVICE)
    tokens = torch.randint(0, f32.config.vocab_size, (8, 28), generator=torch.Generator().manual_seed(1)).to(DEVICE)
    P = 16
    truth = f32(tokens).float()
    distance = {}
    for backend in ("torch", "triton"):
        prompt, decode = _teacher_forced(GptOss.from_pretrained(path, backend=backend, device=DEVICE), tokens, P)
        distance[backend] = ((prompt - truth[:, :P]).abs().mean().item(),
                             (decode - truth[:, P - 1:-1]).abs().mean().item())
    (tri_prompt, tri_decode), (ref_prompt, ref_decode) = distance["triton"], distance["torch"]
    assert tri_prompt < ref_prompt and tri_decode < ref_decode, distance


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("path", ["prompt", "decode"])
def test_bf16_distance_from_the_official_fp32_logits(figures, backend, path):
    mean, worst, agree = figures[backend][path]
    max_mean, max_worst, min_agree = BOUNDS[backend, path]
    assert mean < max_mean and worst < max_worst and agree >= min_agree, \
        f"{backend} {path}: mean {mean:.4f} max {worst:.3f} argmax {agree}"


def _reference_decode(block, x, k_cache, v_cache, positions, cos, sin, dtype) -> torch.Tensor:
    """The reference attention block (model/reference.py's ops) on one new token per row in `dtype`: x [M, H]
    at positions [M] over the rows' cached keys [M, L, Hkv, D] (a full layer: position s at slot s) -> [M, H]."""
    D = block.head_dim
    out = []
    for i, p in enumerate(positions.tolist()):
        qkv = block.qkv(block.norm(x[i:i + 1, None].to(dtype)))
        q = qkv[..., :block.n_heads * D].view(1, 1, block.n_heads, D)
        k = qkv[..., block.n_heads * D:(block.n_heads + block.n_kv_heads) * D].view(1, 1, block.n_kv_heads, D)
        v = qkv[..., (block.n_heads + block.n_kv_heads) * D:].view(1, 1, block.n_kv_heads, D)
        q, k = rope_ref(q, cos[p:p + 1], sin[p:p + 1]), rope_ref(k, cos[p:p + 1], sin[p:p + 1])
        keys = torch.cat((k_cache[i:i + 1, :p].to(dtype), k), dim=1)
        values = torch.cat((v_cache[i:i + 1, :p].to(dtype), v), dim=1)
        o = attention_ref(q, keys, values, block.sinks, sm_scale=block.sm_scale, q_start=p)
        out.append((x[i:i + 1, None].to(dtype) + block.out(o.reshape(1, 1, -1)))[0, 0])
    return torch.stack(out).float()


def test_attention_path_is_as_precise_as_the_reference(golden_dir, figures):
    """The attention block on its own, where no router can flip: prefill, layer 0 of the golden prompt; decode,
    a full layer of the golden checkpoint on 64 rows at positions 5..29 over bf16 caches (decode_qkv,
    decode_attention, linear). Triton's distance from the same block in fp32 is within 5% of the reference's
    bf16 distance, or closer (measured: prompt 0.00760 vs 0.00789, decode 0.00318 vs 0.00352)."""
    ours, ref = figures["triton"]["layer0"], figures["torch"]["layer0"]
    assert ours[0] <= 1.05 * ref[0], f"prompt: Triton {ours[0]:.5f}, reference {ref[0]:.5f}"

    models = {(b, d): GptOss.from_pretrained(golden_dir / "tiny_seed7/hf", backend=b, dtype=d, device=DEVICE)
              for b, d in (("triton", torch.bfloat16), ("torch", torch.bfloat16), ("torch", torch.float32))}
    tri = models["triton", torch.bfloat16]
    layer = next(i for i in range(tri.config.num_hidden_layers) if not tri.config.is_sliding(i))
    g = torch.Generator().manual_seed(0)
    M = 64
    positions = torch.randint(5, 30, (M,), generator=g).int().to(DEVICE)
    cache = tri.new_cache(M, 40)
    for c in (cache.k[layer], cache.v[layer]):
        c.copy_(torch.randn(c.shape, generator=g).bfloat16())
    cache.lengths.copy_(positions)
    x = tri.embedding(torch.randint(0, tri.config.vocab_size, (M,), generator=g).to(DEVICE))
    cos, sin = tri.rope_tables()
    args = (x, cache.k[layer], cache.v[layer], positions, cos, sin)
    truth = _reference_decode(models["torch", torch.float32].block[layer].attn, *args, torch.float32)
    theirs = (_reference_decode(models["torch", torch.bfloat16].block[layer].attn, *args, torch.bfloat16)
              - truth).abs().mean().item()
    ours = (tri.block[layer].attn.decode(x, cos, sin, cache, cache.rows, cache.rows_active).float()
            - truth).abs().mean().item()
    assert ours <= 1.05 * theirs, f"decode: Triton {ours:.5f}, reference {theirs:.5f}"
