"""Test setup shared by every test: Triton's interpreter on machines without a GPU, the shared data."""
import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    # Must be set before triton is first imported: kernels then run in Triton's interpreter on the CPU.
    os.environ.setdefault("TRITON_INTERPRET", "1")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped without one)")
    config.addinivalue_line("markers", "slow: takes more than a few seconds on the CPU")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; this machine has none")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent: the shared golden data and tokenizer are not available")
    return SHARED


@pytest.fixture(scope="session")
def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="session")
def o200k(shared_dir):
    """The real gpt-oss tokenizer (27 MB: loaded once per session)."""
    from gpt_oss_triton.model import Tokenizer
    return Tokenizer.from_file(shared_dir / "o200k_harmony" / "tokenizer.json")


@pytest.fixture(scope="session")
def byte_level():
    from gpt_oss_triton.model import Tokenizer
    return Tokenizer.byte_level()


@pytest.fixture(params=["o200k", "byte_level"])
def tokenizer(request):
    """Each test that takes it runs with the real tokenizer and with the built-in byte-level one."""
    return request.getfixturevalue(request.param)
