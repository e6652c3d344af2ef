"""The runtime: what runs a loaded model for requests.

`engine` (continuous batching over KV-cache slots), `sampling` (parameters and the batched sampler),
`decode_graph` (the decode step captured in a CUDA graph), `generate` (one request's token iterator),
`chat` (text in, harmony messages or text out) and `benchmark` (the `bench` command's measurements).
"""
