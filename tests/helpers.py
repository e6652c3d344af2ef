"""Tolerances (one table for the whole suite) and comparison helpers."""
import torch

# (atol, rtol) of a kernel's output against an fp32 reference, by the kernel's output dtype.
TOLERANCE = {
    torch.float32: (1e-4, 1e-4),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (2e-2, 2e-2),
}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype = None, *, scale: float = 1.0,
                 name: str = "output") -> None:
    """allclose with the table's tolerance for `dtype` (default: actual's), printing the worst coordinate."""
    atol, rtol = TOLERANCE[dtype or actual.dtype]
    atol *= scale
    rtol *= scale
    a, e = actual.detach().float().cpu(), expected.detach().float().cpu()
    assert a.shape == e.shape, f"{name}: shape {tuple(a.shape)} != expected {tuple(e.shape)}"
    err = (a - e).abs()
    bad = err > atol + rtol * e.abs()
    bad |= torch.isnan(a) != torch.isnan(e)
    if bad.any():
        idx = tuple(int(i) for i in torch.nonzero(bad)[0]) if bad.dim() else ()
        worst = tuple(int(i) for i in torch.unravel_index(torch.nan_to_num(err, nan=float("inf")).argmax(), err.shape))
        raise AssertionError(
            f"{name}: {int(bad.sum())}/{bad.numel()} elements off (atol={atol:g}, rtol={rtol:g}); "
            f"first at {idx}: got {a[idx].item():.6g}, expected {e[idx].item():.6g}; "
            f"worst at {worst}: |diff| {err[worst].item():.3g}")
