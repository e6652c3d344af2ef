"""The KV cache the Triton attention kernels read and write.

Per layer, keys and values [B, L, Hkv, D] in the activation dtype, position s of sequence b at slot s % L:
full-attention layers have L = max_len (nothing wraps), sliding layers a ring buffer of L = sliding_window
slots, so their memory does not grow with the context. `lengths` [B] int32 lives on the device: the number
of positions each sequence has cached, read by the kernels without a host sync (CUDA-graph friendly).
All layers share `lengths`: the model advances it once per step, after the last layer.
Beside them, fixed device buffers for a decode step of every row: `rows` (0..B-1 as int32 slot ids) and
`rows_active` (ones).
"""
import torch

from .config import GptOssConfig


class TritonKVCache:
    def __init__(self, config: GptOssConfig, batch_size: int, max_len: int, dtype: torch.dtype = torch.bfloat16,
                 device=None):
        if batch_size <= 0 or max_len <= 0:
            raise ValueError(f"TritonKVCache: batch_size ({batch_size}) and max_len ({max_len}) must be positive")
        self.batch_size, self.max_len = batch_size, max_len
        self.k, self.v = [], []
        for layer in range(config.num_hidden_layers):
            slots = config.sliding_window if config.is_sliding(layer) and config.sliding_window else max_len
            shape = (batch_size, slots, config.num_key_value_heads, config.head_dim)
            self.k.append(torch.zeros(shape, dtype=dtype, device=device))
            self.v.append(torch.zeros(shape, dtype=dtype, device=device))
        self.lengths = torch.zeros(batch_size, dtype=torch.int32, device=device)
        self.rows = torch.arange(batch_size, dtype=torch.int32, device=device)
        self.rows_active = torch.ones(batch_size, dtype=torch.int32, device=device)

    def advance(self, n_new: torch.Tensor | int) -> None:
        """lengths += n_new (an int, or [B] int32 new tokens per sequence), in place on the device."""
        self.lengths += n_new

    def reset(self, slot: int | None = None) -> None:
        """Empty one sequence's row (the engine reuses the slot), or every row."""
        if slot is None:
            self.lengths.zero_()
        else:
            self.lengths[slot] = 0

    @property
    def length(self) -> int:
        """The common length of every row (a host sync: for the public forward, not the decode loop)."""
        lengths = self.lengths.tolist()
        if len(set(lengths)) != 1:
            raise ValueError(f"cache rows hold different lengths {lengths}: use forward_packed")
        return lengths[0]
