"""Decode steps of the active rows, with the sampler inside, captured once per bucket of rows in a CUDA graph.

At batch 1 a decode step of gpt-oss is a few hundred small kernels; launched from Python one by one, their
launch cost rivals the time the GPU needs to read the weights. `DecodeGraph(model, cache, sampler)` records
`model.decode_step` on the rows of one step and `sampler.draw` of their next tokens into a CUDA graph, and each
later step of as many rows replays it: one launch per token, no host work but the stream of tokens.

Only the active rows run, compacted: a step of n rows takes the graph of the smallest bucket >= n (1, 2, 4, ...,
max_batch), whose first n rows are the active slots and whose padding rows copy the first of them (same slot,
same token, active 0: they compute what it computes, read no other KV and route to no other experts, and leave
no trace). A row that leaves stops costing anything at the next step.

Buffers that never move (the graphs read and write them; the host writes them only when the set of rows changes):
  tokens [n_slots + 1] int64  each slot's next input token. The graph writes each row's sampled token back
                              into it, so the next replay reads it on the device; entry n_slots takes the
                              padding rows' tokens. A prefill step writes the tokens it samples here too.
  per bucket: slots [n] int32 (cache rows), active [n] int32 and int64 (1 real, 0 padding), dest [n] int64
              (where the row's token goes: its slot, or n_slots for padding).
Graphs are keyed by (bucket, sampler plan): greedy, sampling and filtered sampling rows share one graph when
they share a step (`SlotSampler.plan`). A step with a row whose draw needs the sampler's call (a constraint,
logit bias, penalties, logprobs) runs with draw=False: the graph ends at the logits, and the caller draws and
writes `tokens`. On a CPU (or with capture=False) the same step runs eagerly.
"""
from dataclasses import dataclass

import torch


@dataclass
class _Bucket:
    slots: torch.Tensor
    active: torch.Tensor
    advance: torch.Tensor
    dest: torch.Tensor
    rows: tuple = ()  # the host's copy of the slots the buffers hold


def buckets(max_batch: int) -> list[int]:
    """Row counts that get a graph: powers of two below max_batch, and max_batch."""
    sizes = [1 << i for i in range(max_batch.bit_length()) if 1 << i < max_batch]
    return sizes + [max_batch]


class DecodeGraph:
    def __init__(self, model, cache, sampler=None, capture: bool | None = None):
        """sampler: the engine's SlotSampler (None: every step runs with draw=False)."""
        device = cache.lengths.device
        self.model, self.cache, self.sampler = model, cache, sampler
        self.n_slots = cache.batch_size
        self.tokens = torch.zeros(self.n_slots + 1, dtype=torch.long, device=device)
        self.capture = device.type == "cuda" if capture is None else capture
        if self.capture and device.type != "cuda":
            raise ValueError(f"DecodeGraph: CUDA-graph capture needs a CUDA cache, this one is on {device}")
        self.sizes = buckets(self.n_slots)
        self._buckets: dict[int, _Bucket] = {}
        self._graphs: dict[tuple, tuple["torch.cuda.CUDAGraph", torch.Tensor]] = {}
        self._pool = None

    def bucket(self, n: int) -> int:
        return next(size for size in self.sizes if size >= n)

    def __call__(self, slots: list[int], draw: bool = True) -> torch.Tensor:
        """One decode step of cache rows `slots` (each takes its token from `tokens`); lengths of those rows += 1.
        draw: with the draw of their next tokens -> tokens [len(slots)] int64 on the device, also written to
        `tokens` at their slots; else -> their logits [len(slots), V] fp32."""
        if not slots or len(set(slots)) != len(slots) or not all(0 <= b < self.n_slots for b in slots):
            raise ValueError(f"DecodeGraph: slots must be distinct cache rows in [0, {self.n_slots}), got {slots}")
        n = len(slots)
        bucket = self._bucket_buffers(self.bucket(n), tuple(slots))
        plan = self.sampler.plan(slots) if draw else None
        if draw and plan is None:
            raise ValueError("DecodeGraph: these rows' draw needs the sampler's call (logit bias, penalties or "
                             "logprobs): run the step with draw=False")
        if not self.capture:
            return self._step(bucket, plan)[:n]
        key = self._key(len(bucket.slots), plan)
        if key not in self._graphs:
            self._graphs[key] = self._record(bucket, plan)
        graph, out = self._graphs[key]
        graph.replay()
        return out[:n]

    def _key(self, size: int, plan) -> tuple:
        """The graph a step of `size` rows with this draw plan replays."""
        return size, plan

    def _bucket_buffers(self, size: int, rows: tuple) -> _Bucket:
        """The bucket's buffers, rewritten (one host-to-device copy) when its rows differ from the last step's."""
        bucket = self._buckets.get(size)
        if bucket is None:
            device = self.tokens.device

            def empty(dtype):
                return torch.zeros(size, dtype=dtype, device=device)

            bucket = self._buckets[size] = _Bucket(empty(torch.int32), empty(torch.int32), empty(torch.long),
                                                   empty(torch.long))
        if bucket.rows != rows:
            pad = size - len(rows)
            slots = list(rows) + [rows[0]] * pad
            active = [1] * len(rows) + [0] * pad
            dest = list(rows) + [self.n_slots] * pad
            self._write(bucket, slots, active, dest)
            bucket.rows = rows
        return bucket

    @staticmethod
    def _write(bucket: _Bucket, slots, active, dest) -> None:
        host = torch.tensor([slots, active, dest], dtype=torch.long)
        if bucket.slots.is_cuda:
            host = host.pin_memory()
        packed = host.to(bucket.slots.device, non_blocking=True)
        bucket.slots.copy_(packed[0])
        bucket.active.copy_(packed[1])
        bucket.advance.copy_(packed[1])
        bucket.dest.copy_(packed[2])

    def _step(self, bucket: _Bucket, plan) -> torch.Tensor:
        tokens = self.tokens.index_select(0, bucket.slots)
        logits = self.model.decode_step(tokens, bucket.active, self.cache, bucket.slots)
        if plan is None:
            return logits
        nxt = self.sampler.draw(logits, bucket.slots, bucket.advance, plan)
        self.tokens.index_copy_(0, bucket.dest, nxt)
        return nxt

    @torch.inference_mode()
    def _record(self, bucket: _Bucket, plan) -> tuple["torch.cuda.CUDAGraph", torch.Tensor]:
        # Warm up outside the capture (Triton compiles and autotunes, the RoPE table is built), on a side stream as
        # capture requires. Warm-up leaves no trace: no row is active (no KV written, no length or draw advanced)
        # and every token goes to the padding entry; the real buffers are written back before the first replay.
        rows = bucket.rows
        size = len(bucket.slots)
        self._write(bucket, [rows[0]] * size, [0] * size, [self.n_slots] * size)
        side = torch.cuda.Stream(device=self.tokens.device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self._step(bucket, plan)
        torch.cuda.current_stream().wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            out = self._step(bucket, plan)
        bucket.rows = ()
        self._bucket_buffers(size, rows)
        return graph, out
