"""MoE kernels at the real shapes (H = I = 2880, k = 4; E = 32 for 20B, 128 for 120B), beside plain torch.

Bytes count what must be read: the packed weights, scales and biases of the experts the routing actually
touched (exact, from the counts), plus activations in and out. MXFP4 weights are 4.25 bits per value.
The torch reference dequantizes each touched expert to bf16 and multiplies (kernels.moe_gemm.*_ref). The Triton
ops take the weights repacked (mxfp4_repack) and activations in their K order (permute_k), as the model holds them;
`moe_block` is the decode entry (norm, router, both GEMMs, combine and residual: three launches at decode).
"""
import pytest
import torch

from gpt_oss_triton.kernels.moe import moe_block
from gpt_oss_triton.kernels.moe_gemm import moe_mlp1, moe_mlp1_ref, moe_mlp2, moe_mlp2_ref
from gpt_oss_triton.kernels.mxfp4 import mxfp4_repack, mxfp4_unrepack, permute_k, unpermute_k
from gpt_oss_triton.kernels.reference import moe_ref, routing_ref
from gpt_oss_triton.kernels.routing import routing

H = I = 2880
K = 4
MODELS = {"20b": 32, "120b": 128}
TOKENS = [1, 8, 64, 512, 4096]


def random_layer(E: int) -> dict:
    """Random codes, scales around 2**-6 (activations O(1) at 2880 inputs), bf16 router and biases."""
    g = torch.Generator(device="cuda").manual_seed(E)

    def packed(n_out, n_in):
        return (torch.randint(0, 256, (E, n_out, n_in // 32, 16), dtype=torch.uint8, device="cuda", generator=g),
                torch.randint(120, 123, (E, n_out, n_in // 32), dtype=torch.uint8, device="cuda", generator=g))

    def randn(*shape, std=1.0):
        return (torch.randn(*shape, device="cuda", generator=g) * std).to(torch.bfloat16)

    (b1, s1), (b2, s2) = mxfp4_repack(*packed(2 * I, H)), mxfp4_repack(*packed(H, I))
    return dict(gate_weight=randn(E, H, std=H ** -0.5), gate_bias=randn(E, std=0.5), mlp1_blocks=b1, mlp1_scales=s1,
                mlp1_bias=randn(E, 2 * I), mlp2_blocks=b2, mlp2_scales=s2, mlp2_bias=randn(E, H))


def expert_bytes(n_out: int, n_in: int) -> float:
    return n_out * n_in * 4.25 / 8 + n_out * 2  # codes + scales, bf16 bias


@pytest.fixture(scope="module", params=list(MODELS))
def layer(request):
    if not torch.cuda.is_available():
        pytest.skip("benchmarks need a CUDA GPU; this machine has none")
    return request.param, random_layer(MODELS[request.param])


def _prepare(layer, T):
    name, w = layer
    gen = torch.Generator(device="cuda").manual_seed(T)
    t = torch.randn(T, H, generator=gen, device="cuda").to(torch.bfloat16)
    r = routing(t, w["gate_weight"], w["gate_bias"], K)
    touched = int((r.counts > 0).sum())
    return name, w, t, r, touched


@pytest.mark.benchmark(group="routing")
@pytest.mark.parametrize("impl", ["triton", "torch"])
@pytest.mark.parametrize("T", TOKENS)
def test_routing(benchmark, run, layer, T, impl):
    name, w, t, _, _ = _prepare(layer, T)
    E = w["gate_weight"].shape[0]
    if impl == "triton":
        fn = lambda: routing(t, w["gate_weight"], w["gate_bias"], K)  # noqa: E731
    else:
        fn = lambda: routing_ref(torch.nn.functional.linear(t, w["gate_weight"], w["gate_bias"]), K)  # noqa: E731
    run(benchmark, fn, bytes_moved=E * H * 2 + T * H * 2 + T * E * 2 + T * K * 8, flops=2 * T * E * H,
        model=name, tokens=T, impl=impl)


@pytest.mark.benchmark(group="moe_mlp1")
@pytest.mark.parametrize("impl", ["triton", "torch"])
@pytest.mark.parametrize("T", TOKENS)
def test_moe_mlp1(benchmark, run, layer, T, impl):
    name, w, t, r, touched = _prepare(layer, T)
    x = permute_k(t) if impl == "triton" else t
    op = moe_mlp1 if impl == "triton" else moe_mlp1_ref
    fn = lambda: op(x, r, w["mlp1_blocks"], w["mlp1_scales"], w["mlp1_bias"])  # noqa: E731
    run(benchmark, fn, bytes_moved=touched * expert_bytes(2 * I, H) + T * H * 2 + T * K * I * 2,
        flops=2 * T * K * 2 * I * H, model=name, tokens=T, impl=impl, experts_touched=touched)


@pytest.mark.benchmark(group="moe_mlp2")
@pytest.mark.parametrize("impl", ["triton", "torch"])
@pytest.mark.parametrize("T", TOKENS)
def test_moe_mlp2(benchmark, run, layer, T, impl):
    name, w, t, r, touched = _prepare(layer, T)
    a = moe_mlp1(permute_k(t), r, w["mlp1_blocks"], w["mlp1_scales"], w["mlp1_bias"])
    a = a if impl == "triton" else unpermute_k(a, I)
    op = moe_mlp2 if impl == "triton" else moe_mlp2_ref
    fn = lambda: op(a, r, w["mlp2_blocks"], w["mlp2_scales"], w["mlp2_bias"], t)  # noqa: E731
    run(benchmark, fn, bytes_moved=touched * expert_bytes(H, I) + T * K * I * 2 + 2 * T * H * 2,
        flops=2 * T * K * H * I, model=name, tokens=T, impl=impl, experts_touched=touched)


@pytest.mark.benchmark(group="moe")
@pytest.mark.parametrize("impl", ["triton", "torch"])
@pytest.mark.parametrize("T", TOKENS)
def test_moe(benchmark, run, layer, T, impl):
    name, w, t, _, touched = _prepare(layer, T)
    if impl == "triton":
        scale = torch.ones(H, device="cuda")
        fn = lambda: moe_block(t, scale, 1e-5, **w, experts_per_token=K)  # noqa: E731
    else:  # the reference reads the checkpoint's layout
        raw = dict(w)
        for mlp in ("mlp1", "mlp2"):
            raw[mlp + "_blocks"], raw[mlp + "_scales"] = mxfp4_unrepack(w[mlp + "_blocks"], w[mlp + "_scales"])
        fn = lambda: moe_ref(t, **raw, experts_per_token=K)  # noqa: E731
    E = w["gate_weight"].shape[0]
    run(benchmark, fn, bytes_moved=touched * (expert_bytes(2 * I, H) + expert_bytes(H, I)) + E * H * 2 + 2 * T * H * 2,
        flops=2 * T * E * H + 2 * T * K * 3 * I * H, model=name, tokens=T, impl=impl, experts_touched=touched)
