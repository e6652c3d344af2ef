"""sample_tokens over gpt-oss's vocabulary (201088) at decode batch sizes: one launch for every row, against
the per-row torch sampler it replaces (softmax + multinomial with a generator per request).

GB/s on the logits read (bf16), as a fraction of the measured copy bandwidth. The Philox noise costs compute
per logit, so this op is allowed to sit below the bandwidth roof; what matters is its microseconds per step.
"""
import pytest
import torch

from gpt_oss_triton.kernels.sample import sample_tokens

V = 201088
BATCHES = [1, 8, 64]


@pytest.mark.benchmark(group="sample_tokens")
@pytest.mark.parametrize("impl", ["triton", "torch_per_row"])
@pytest.mark.parametrize("R", BATCHES)
def test_sample_tokens(benchmark, run, R, impl):
    logits = torch.randn(R, V, device="cuda", dtype=torch.bfloat16)
    t = torch.ones(R, device="cuda")
    seeds, draws = torch.arange(R, device="cuda"), torch.zeros(R, dtype=torch.int64, device="cuda")
    generators = [torch.Generator(device="cuda").manual_seed(r) for r in range(R)]

    def per_row():
        return torch.cat([torch.multinomial(logits[r:r + 1].float().softmax(-1), 1, generator=g).squeeze(-1)
                          for r, g in enumerate(generators)])

    fn = (lambda: sample_tokens(logits, t, seeds, draws)) if impl == "triton" else per_row
    run(benchmark, fn, bytes_moved=R * V * 2, op="sample_tokens", impl=impl, batch=R)
