"""The launch-plan convention: launches are recorded (not run) on meta tensors, with the launcher's specialisation."""
import pytest
import torch

from gpt_oss_triton.kernels import launch_plan
from gpt_oss_triton.kernels.rmsnorm import rmsnorm


def test_records_a_launch_without_running_it():
    x = torch.empty(3, 2880, dtype=torch.bfloat16, device="meta")
    scale = torch.empty(2880, dtype=torch.float32, device="meta")
    with launch_plan.record() as launches:
        out = rmsnorm(x, scale)
    assert out.device.type == "meta"
    (launch,) = launches
    assert launch.name == "_rmsnorm_kernel" and launch.args["N"] == 3 and launch.args["H"] == 2880
    (constexprs, options, grid), = launch.candidates()
    assert constexprs["BLOCK_H"] == 4096 and grid[1:] == (1, 1) and options["num_warps"] >= 1
    signature, consts, attrs = launch_plan.specialize(launch, constexprs)
    assert signature["X"] == "*bf16" and signature["eps"] == "fp32" and signature["H"] == "i32"
    names = launch.kernel.arg_names
    assert [["tt.divisibility", 16]] == attrs[(names.index("H"),)]  # 2880 % 16 == 0
    assert (names.index("N"),) not in attrs and (names.index("eps"),) not in attrs


def test_specialisation_matches_tritons_launcher():
    native = pytest.importorskip("triton._C.libtriton").native_specialize_impl
    from triton.backends.nvidia.compiler import CUDABackend
    base = torch.empty(64, dtype=torch.bfloat16)
    for value in (1, 16, 17, 0, 2880, 2 ** 40, True, 0.5, None, base, base[1:], base[8:]):
        kind, divisible = launch_plan._specialize_value(value, specialize=True, align=True)
        got = native(CUDABackend, value, False, True, True)
        assert got[0] == kind, value
        if kind != "constexpr":
            assert (got[1] == "D") == divisible, value


def test_records_torch_launches_and_our_ops_inside():
    a = torch.empty(1, 64, dtype=torch.bfloat16, device="meta")
    w = torch.empty(32, 64, dtype=torch.bfloat16, device="meta")
    b = torch.empty(32, dtype=torch.bfloat16, device="meta")
    with launch_plan.record() as launches:
        torch.nn.functional.linear(a, w, b).view(32)
    (mm,) = launches
    assert isinstance(mm, launch_plan.TorchLaunch) and "addmm" in mm.op and mm.count == 2  # bias copy + GEMM at M=1
    assert mm.bytes == (64 + 32 * 64 + 32 + 32) * 2
