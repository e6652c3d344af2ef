"""The decode step on static buffers, captured once in a CUDA graph and replayed for every token.

At batch 1 a decode step of gpt-oss is a few hundred small kernels; launched from Python one by one, their
launch cost rivals the time the GPU needs to read the weights. `DecodeGraph(model, cache)` records
`model.decode_step(tokens, active, cache)` (shapes fixed by the cache's batch, no host sync inside) into a
CUDA graph on its first call, and each later call replays it: one launch per token.

The graph reads its inputs from buffers that never move: write the next tokens into `tokens` [B] (int64)
and which rows take them into `active` [B] (int32, 1 or 0) on the device, then call; the logits [B, V] come
back in a buffer the next call overwrites. The cache's tensors (lengths included) are fixed too, so
`cache.reset(slot)` between calls is safe. On a CPU (or with capture=False) the same call runs eagerly.
"""
import torch


class DecodeGraph:
    def __init__(self, model, cache, capture: bool | None = None):
        device = cache.lengths.device
        self.model, self.cache = model, cache
        self.tokens = torch.zeros(cache.batch_size, dtype=torch.long, device=device)
        self.active = torch.zeros(cache.batch_size, dtype=torch.int32, device=device)
        self.capture = device.type == "cuda" if capture is None else capture
        if self.capture and device.type != "cuda":
            raise ValueError(f"DecodeGraph: CUDA-graph capture needs a CUDA cache, this one is on {device}")
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None

    def _step(self) -> torch.Tensor:
        return self.model.decode_step(self.tokens, self.active, self.cache)

    def __call__(self) -> torch.Tensor:
        """Run the step: logits [B, V] of every row (inactive rows: meaningless); lengths += active."""
        if not self.capture:
            return self._step()
        if self.graph is None:
            self._record()
        self.graph.replay()
        return self.logits

    @torch.inference_mode()
    def _record(self) -> None:
        # Warm up outside the capture (Triton compiles and autotunes, cuBLAS picks its kernels, the RoPE table
        # is built), on a side stream as capture requires. Warm-up and capture advance no row: `active` is
        # zeroed meanwhile, and a step with no active row only rewrites never-read slots (see decode_step).
        active = self.active.clone()
        self.active.zero_()
        side = torch.cuda.Stream(device=self.tokens.device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self._step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.logits = self._step()
        self.graph = graph
        self.active.copy_(active)
