"""Checkpoint files: reading both gpt-oss layouts, and writing synthetic ones."""
from .checkpoint import HF, ORIGINAL, Checkpoint, detect_layout, load
from .names import expected_tensors, hf_names, is_mxfp4
from .safetensors_io import CheckpointError, SafetensorsFile, write_safetensors
from .synthetic import make_checkpoint, synthetic_tensor

__all__ = ["HF", "ORIGINAL", "Checkpoint", "CheckpointError", "SafetensorsFile", "detect_layout", "expected_tensors",
           "hf_names", "is_mxfp4", "load", "make_checkpoint", "synthetic_tensor", "write_safetensors"]
