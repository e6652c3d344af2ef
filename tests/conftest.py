"""Test setup shared by every test: Triton's interpreter on machines without a GPU, the vendored test data."""
import hashlib
import lzma
import os
import sys
from pathlib import Path

# `python -m pytest` puts the working directory on sys.path; run from the checkout, that made our top-level folders
# importable under bare names (transformers then took `kernels/` for the hub-kernels library). Our code is only
# `gpt_oss_triton.*`, so the checkout root leaves the path before anything imports a third-party package.
REPO = Path(__file__).resolve().parents[1]
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != REPO]

import pytest  # noqa: E402
import torch  # noqa: E402

if not torch.cuda.is_available():
    # Must be set before triton is first imported: kernels then run in Triton's interpreter on the CPU.
    os.environ.setdefault("TRITON_INTERPRET", "1")
    # The tests run many tiny ops: a thread pool buys nothing, and on a busy machine a pool spinning for cores it
    # does not get is ~100x slower (an engine test: 0.9 s on one thread, 136 s on two). Subprocesses inherit it.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# OpenAI's outputs on a tiny checkpoint and the real tokenizer, copied into the repo (tests/data/README.md).
DATA = Path(__file__).resolve().parent / "data"
O200K_SHA256 = "0614fe83cadab421296e664e1f48f4261fa8fef6e03e63bb75c20f38e37d07d3"


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
def golden_dir() -> Path:
    """tests/data/golden: a missing file fails the tests that need it (never a skip)."""
    golden = DATA / "golden"
    if not (golden / "README.md").is_file():
        pytest.fail(f"{golden} is missing: the golden data ships with the repo; restore it from git")
    return golden


@pytest.fixture(scope="session")
def o200k_path(tmp_path_factory) -> Path:
    """The real o200k_harmony tokenizer.json, decompressed once per session from tests/data (xz, 2.9 MB)."""
    packed = DATA / "o200k_harmony" / "tokenizer.json.xz"
    if not packed.is_file():
        pytest.fail(f"{packed} is missing: the tokenizer ships with the repo; restore it from git")
    raw = lzma.decompress(packed.read_bytes())
    assert hashlib.sha256(raw).hexdigest() == O200K_SHA256, f"{packed} does not hold the o200k_harmony tokenizer"
    path = tmp_path_factory.mktemp("o200k_harmony") / "tokenizer.json"
    path.write_bytes(raw)
    return path


@pytest.fixture(scope="session")
def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="session")
def o200k(o200k_path):
    """The real gpt-oss tokenizer (27 MB: loaded once per session)."""
    from gpt_oss_triton.model import Tokenizer
    return Tokenizer.from_file(o200k_path)


@pytest.fixture(scope="session")
def byte_level():
    from gpt_oss_triton.model import Tokenizer
    return Tokenizer.byte_level()


@pytest.fixture(params=["o200k", "byte_level"])
def tokenizer(request):
    """Each test that takes it runs with the real tokenizer and with the built-in byte-level one."""
    return request.getfixturevalue(request.param)
