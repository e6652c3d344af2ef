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
    Triton                  prompt   0.0704    1.737    30/32
    Triton                  decode   see DECODE below

On this tiny model a bf16 run's distance is dominated by a few router flips (4th/5th expert within bf16 noise:
the golden README); Triton's max |d| on the prompt is one token (11) whose layer-2 router flips, where the
residual stream before it is as close to fp32 as the reference's. The bounds leave a margin over these figures.
"""
import pytest
import torch
from safetensors.torch import load_file

from gpt_oss_triton.model import GptOss

torch.set_grad_enabled(False)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# (mean, max, minimum argmax agreement) bounds per (backend, path), with a margin over the figures above.
BOUNDS = {
    ("torch", "prompt"): (0.065, 0.6, 30),
    ("torch", "decode"): (0.055, 0.35, 8),
    ("triton", "prompt"): (0.08, 2.0, 29),
    ("triton", "decode"): (0.055, 0.35, 7),
}


@pytest.fixture(scope="module")
def golden(golden_dir):
    return load_file(golden_dir / "official_fp32.safetensors")


def _distance(logits: torch.Tensor, expected: torch.Tensor) -> tuple[float, float, int]:
    diff = (logits.float().cpu() - expected).abs()
    return diff.mean().item(), diff.max().item(), int((logits.float().cpu().argmax(-1) == expected.argmax(-1)).sum())


def _decode_logits(model, golden) -> torch.Tensor:
    """Prefill the prompt, then feed the golden greedy tokens one decode step at a time: the logits of each step."""
    tokens = golden["tokens"][None].to(DEVICE)
    cache = model.new_cache(1, 64)
    steps = [model(tokens, cache)[0, -1]]
    for token in golden["generated"][:-1].tolist():
        t = torch.tensor([token], device=DEVICE)
        if hasattr(model, "decode_step"):
            steps.append(model.decode_step(t, torch.ones(1, dtype=torch.int32, device=DEVICE), cache)[0])
        else:
            steps.append(model(t[None], cache)[0, -1])
    return torch.stack(steps)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_bf16_distance_from_the_official_fp32_logits(golden_dir, golden, backend):
    model = GptOss.from_pretrained(golden_dir / "tiny_seed7/hf", backend=backend, device=DEVICE)
    figures = {"prompt": _distance(model(golden["tokens"][None].to(DEVICE))[0], golden["logits"]),
               "decode": _distance(_decode_logits(model, golden), golden["gen_logits"])}
    for path, (mean, worst, agree) in figures.items():
        max_mean, max_worst, min_agree = BOUNDS[backend, path]
        assert mean < max_mean and worst < max_worst and agree >= min_agree, \
            f"{backend} {path}: mean {mean:.4f} max {worst:.3f} argmax {agree}"
