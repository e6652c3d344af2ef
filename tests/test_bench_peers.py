"""bench/peers.py and bench/engines.py on the CPU: Hugging Face transformers' gpt-oss, given our weights, computes
what our reference computes (an independent check of the reference), through the engines the e2e benchmark uses."""
import sys
from pathlib import Path

import pytest
import torch

from gpt_oss_triton.model import GptOss
from helpers import assert_close

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import engines  # noqa: E402
import peers  # noqa: E402


@pytest.fixture(scope="module")
def ours():
    return GptOss.from_pretrained("tiny", dtype=torch.float32, device="cpu")


@pytest.fixture(scope="module")
def theirs(ours):
    pytest.importorskip("transformers")
    return peers.hf_model(ours)


def test_transformers_logits_equal_the_reference(ours, theirs):
    tokens = engines.random_tokens(ours.config.vocab_size, 2, 40, "cpu", seed=1)  # past the window of 16
    with torch.inference_mode():
        assert_close(theirs(input_ids=tokens).logits, ours(tokens), torch.float32, name="transformers logits")


def test_engines_prefill_and_decode_alike(ours, theirs):
    """Same tokens, same zero-filled cache at context 20 (past the window): same logits, every round."""
    mine, hf = engines.OursEngine(ours), engines.HFEngine(theirs, ours.config.vocab_size)
    with torch.inference_mode():
        for kind in ("prefill", "decode"):
            a, b = getattr(mine, kind)(2, 20), getattr(hf, kind)(2, 20)
            first = a.run(*a.setup())
            assert_close(a.run(*a.setup()), first, torch.float32, name=f"ours, {kind} again")
            assert_close(b.run(*b.setup()), first, torch.float32, name=f"transformers {kind}")
    assert first.shape == (2, 1, ours.config.vocab_size)


def test_missing_transformers_skips_the_peer_by_name(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(pytest.skip.Exception, match="^peer transformers: not installed"):
        peers.transformers_or_skip()


def test_a_failing_compile_skips_the_peer_by_name(monkeypatch):
    def broken(fn):
        raise RuntimeError("no compiler here\nmore detail")

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.raises(pytest.skip.Exception, match="^peer torch.compile: RuntimeError: no compiler here$"):
        peers.compiled(torch.add, torch.ones(2), 1)
