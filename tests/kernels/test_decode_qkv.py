"""decode_qkv (norm -> qkv + bias -> RoPE -> KV-cache write) against decode_qkv_ref: GQA groups of 1 and 8+,
rows scattered over cache slots, inactive rows, positions that wrap a ring buffer."""
import pytest
import torch
from helpers import assert_close

from gpt_oss_triton.kernels.decode_qkv import decode_qkv, decode_qkv_ref
from gpt_oss_triton.kernels.reference import rope_cos_sin, yarn_inv_freq

D = 64


def _table(n_positions, device):
    inv_freq, concentration = yarn_inv_freq(D, 150000.0, 32.0, 1.0, 32.0, 4096)
    return [t.to(device) for t in rope_cos_sin(torch.arange(n_positions), inv_freq, concentration)]


def _case(hq, hkv, lengths, slots, active, cache_len, H, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    M, B = len(slots), len(lengths)
    n = (hq + 2 * hkv) * D
    x = (torch.randn(M, H, generator=g) * 3).bfloat16()
    w = (torch.randn(n, H, generator=g) / H ** 0.5).bfloat16()
    bias = torch.randn(n, generator=g).bfloat16()
    scale = torch.rand(H, generator=g) + 0.5
    k_cache = torch.randn(B, cache_len, hkv, D, generator=g).bfloat16()
    v_cache = torch.randn(B, cache_len, hkv, D, generator=g).bfloat16()
    cos, sin = _table(max(lengths) + 1, device)
    ints = [torch.tensor(v, dtype=torch.int32, device=device) for v in (lengths, slots, active)]
    return dict(x=x.to(device), weight=w.to(device), bias=bias.to(device), norm_scale=scale.to(device), eps=1e-5,
                cos=cos, sin=sin, k_cache=k_cache.to(device), v_cache=v_cache.to(device), lengths=ints[0],
                slots=ints[1], active=ints[2])


def _run(args):
    ours = {k: v.clone() if k in ("k_cache", "v_cache") else v for k, v in args.items()}
    ref = {k: v.clone() if k in ("k_cache", "v_cache") else v for k, v in args.items()}
    q = decode_qkv(**ours)
    q_ref = decode_qkv_ref(**{k: v.cpu() if torch.is_tensor(v) else v for k, v in ref.items()})
    return q, q_ref, ours, ref


@pytest.mark.parametrize("hq,hkv", [(2, 2), (8, 1), (16, 2)])  # GQA groups 1, 8, 8 over 2 KV heads
def test_decode_qkv(hq, hkv, device):
    # Rows continue slots 3, 0, 2 (out of order); slot 1 takes no row; row 2 is inactive (a bucket's padding).
    args = _case(hq, hkv, lengths=[5, 30, 0, 17], slots=[3, 0, 2], active=[1, 1, 0], cache_len=16, H=96,
                 device=device)
    q, q_ref, ours, ref = _run(args)
    # bf16 q, k, v from the same fp32 values: at most one rounding step apart where summation order differs.
    assert_close(q, q_ref, scale=0.5, name="q")
    for name in ("k_cache", "v_cache"):
        assert_close(ours[name], ref[name].to(device), scale=0.5, name=name)
    untouched = ours["k_cache"].clone()
    untouched[[3, 0], [17 % 16, 5 % 16]] = args["k_cache"][[3, 0], [17 % 16, 5 % 16]]
    assert torch.equal(untouched, args["k_cache"]), "only the active rows' (slot, position % L) entries change"


def _assert_rounded_from(got: torch.Tensor, expected: torch.Tensor, name: str) -> None:
    """got (bf16) is expected (fp32) rounded: within one bf16 rounding per element, and with no bias over all of
    them (a 0.1% constant error in a norm, bias or rotation term would shift the mean by 1e-3; bf16 rounding
    noise averages to < 1e-4 over these thousands of elements)."""
    got, expected = got.float().cpu(), expected.float().cpu()
    assert ((got - expected).abs() <= expected.abs() * 2 ** -7 + 1e-30).all(), f"{name}: beyond one bf16 ulp"
    big = expected.abs() > 0.1
    bias = ((got - expected)[big] / expected[big]).mean().item()
    assert abs(bias) < 2e-4, f"{name}: mean relative error {bias:.2e}"


def test_decode_qkv_fp32_epilogue(device):
    """Norm, bias and rotation against the fp32 math of the spec (not the reference's bf16 roundings)."""
    lengths = [0, 9, 33, 100, 4, 7, 64, 1]
    args = _case(16, 2, lengths=lengths, slots=list(range(8)), active=[1] * 8, cache_len=128, H=128,
                 device=device, seed=3)
    k_cache, v_cache = args["k_cache"].clone(), args["v_cache"].clone()
    q = decode_qkv(**{**args, "k_cache": k_cache, "v_cache": v_cache})
    x, scale = args["x"].float(), args["norm_scale"].float()
    t = (x * scale).bfloat16().float()  # the one rounding of the normalised input, before the product
    qkv = (t @ args["weight"].float().T) * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) + args["bias"].float()
    pos = torch.tensor(lengths, device=device)
    cos = args["cos"][pos].bfloat16().float()[:, None, :]
    sin = args["sin"][pos].bfloat16().float()[:, None, :]

    def rotate(h):
        h1, h2 = h.chunk(2, dim=-1)
        return torch.cat((h1 * cos - h2 * sin, h2 * cos + h1 * sin), dim=-1)

    rows = torch.arange(8, device=device)
    _assert_rounded_from(q, rotate(qkv[:, :16 * D].view(8, 16, D)), "q")
    _assert_rounded_from(k_cache[rows, pos], rotate(qkv[:, 16 * D:18 * D].view(8, 2, D)), "k")
    _assert_rounded_from(v_cache[rows, pos], qkv[:, 18 * D:].view(8, 2, D), "v")


def test_decode_qkv_rejects_bad_inputs(device):
    args = _case(4, 2, lengths=[0, 9], slots=[0, 1], active=[1, 1], cache_len=16, H=64, device=device)
    with pytest.raises(ValueError, match=r"slots must be int32 \[2\]"):
        decode_qkv(**{**args, "slots": args["slots"].long()})
    with pytest.raises(ValueError, match="norm_scale is required"):
        decode_qkv(**{**args, "norm_scale": None})
    with pytest.raises(ValueError, match=r"cos must be a contiguous fp32 \[P, 32\]"):
        decode_qkv(**{**args, "cos": args["cos"][:, :16].contiguous()})
