"""Whether kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1), where two things differ from the GPU:
tl.dot on bf16 operands gives wrong results (kernels upcast dot operands to fp32 there), and every program
costs milliseconds of Python (launchers give each program more work there)."""
import os


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"
