"""The public `GptOss.from_pretrained` API: presets, checkpoint directories, backends, tokenizers."""
import shutil

import pytest
import torch

from gpt_oss_triton.loader import make_checkpoint
from gpt_oss_triton.model import PRESETS, GptOss, Tokenizer
from gpt_oss_triton.model.gpt_oss import OptionError


def test_preset_has_byte_tokenizer_and_reference_backend_on_cpu():
    model = GptOss.from_pretrained("tiny", device="cpu")
    assert isinstance(model, torch.nn.Module) and model.backend == "torch"
    assert model.config == PRESETS["tiny"]
    assert model.tokenizer.decode(model.tokenizer.encode("hé<|start|>")) == "hé<|start|>"
    tokens = torch.tensor([model.tokenizer.encode("hello")])
    logits = model(tokens)
    assert logits.shape == (1, 5, model.config.vocab_size) and logits.dtype == torch.bfloat16
    assert not any(p.requires_grad for p in model.parameters())


def test_preset_weights_equal_the_written_checkpoint(tmp_path):
    """The embedded default and `make-checkpoint --seed 0` are the same model."""
    path = make_checkpoint(tmp_path / "tiny", PRESETS["tiny"], layout="original", seed=0)
    a = GptOss.from_pretrained("tiny", dtype=torch.float32, device="cpu")
    b = GptOss.from_pretrained(path, dtype=torch.float32, device="cpu")
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert b.tokenizer is None
    assert sb["block.0.attn.norm.scale"].dtype == torch.float32  # norms in fp32 whatever the model dtype


def test_checkpoint_tokenizer_is_loaded(tmp_path, o200k_path):
    path = make_checkpoint(tmp_path / "m", PRESETS["tiny"], layout="hf", seed=1)
    shutil.copy(o200k_path, path / "tokenizer.json")
    model = GptOss.from_pretrained(path, device="cpu")
    assert isinstance(model.tokenizer, Tokenizer) and model.tokenizer.vocab_size == 200019


def test_unknown_backend_and_preset(tmp_path):
    with pytest.raises(ValueError, match="backend='cuda-magic' is not available"):
        GptOss.from_pretrained("tiny", backend="cuda-magic", device="cpu")
    with pytest.raises(ValueError, match=r"gpt-oss-7b: no such directory, and not a preset \(gpt-oss-20b, gpt-oss-120b, "
                                         r"tiny, nano\)"):
        GptOss.from_pretrained(tmp_path / "gpt-oss-7b")


def test_unusable_device_is_named(monkeypatch):
    """A device this torch cannot use fails before anything loads, naming it (Python's words here; the CLI's
    flags through OptionError.cli, tested in test_cli.py)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(OptionError, match=r"^device='cuda' is not available: .*; use device='cpu'$"):
        GptOss.from_pretrained("tiny", device="cuda")
    with pytest.raises(OptionError, match=r"^device='cuda:1' is not available"):
        GptOss.from_pretrained("tiny", device=torch.device("cuda", 1))
