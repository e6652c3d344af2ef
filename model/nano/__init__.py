"""gpt-oss-nano: a small gpt-oss trained by our own script on a generated harmony corpus.

`corpus` makes the seeded conversations, `bpe` trains its tokenizer, `network` is the trainable form of the
graph (dense experts, MXFP4 fake-quantized) and its export to a checkpoint, `train` the training command,
`evaluate` the held-out figures behind `gpt-oss-triton eval-nano`. The trained weights ship in `weights/`.
"""
from pathlib import Path

WEIGHTS_DIR = Path(__file__).parent / "weights"
