"""Our synthetic checkpoints load unchanged in other implementations: Hugging Face transformers reads the hf-layout
directory make_checkpoint writes (config.json, tensor names, packed MXFP4 experts) as it reads the released ones."""
import pytest
import torch
from helpers import assert_close

from gpt_oss_triton.loader import make_checkpoint
from gpt_oss_triton.model import PRESETS, GptOss


def test_transformers_loads_our_hf_checkpoint(tmp_path):
    """Guards the hf-layout checkpoint we write as a whole: transformers' GptOssForCausalLM.from_pretrained on
    the tiny directory (special-token ids within its 512-token vocabulary, MXFP4 experts dequantized on the
    CPU) computes the logits our reference computes from the same directory, in fp32, past the window."""
    transformers = pytest.importorskip("transformers", reason="needs the transformers package (the test extra)")
    pytest.importorskip("accelerate", reason="needs the accelerate package: transformers reads MXFP4 through it")
    path = make_checkpoint(tmp_path / "tiny", PRESETS["tiny"], layout="hf", seed=5)
    # dequantize=True says what the CPU does anyway; left to choose, transformers with the `kernels` library installed
    # fetches MXFP4 kernels from the hub (no network here).
    dequantize = transformers.Mxfp4Config(dequantize=True)
    theirs = transformers.GptOssForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                            quantization_config=dequantize).eval()
    ours = GptOss.from_pretrained(path, backend="torch", dtype=torch.float32, device="cpu")
    tokens = torch.randint(0, ours.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert_close(theirs(input_ids=tokens).logits, ours(tokens), torch.float32, name="transformers logits")
