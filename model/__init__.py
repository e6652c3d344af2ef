"""The gpt-oss model: config, reference modules, the public `GptOss` class, tokenizer and harmony."""

from . import harmony
from .config import PRESETS, GptOssConfig
from .gpt_oss import GptOss
from .tokenizer import Tokenizer

__all__ = ["GptOss", "GptOssConfig", "PRESETS", "Tokenizer", "harmony"]
