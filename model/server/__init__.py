"""An OpenAI-compatible HTTP server (`gpt-oss-triton serve`): chat and text completions, streamed or not.

`app.create_app(model, tokenizer, ...)` builds the ASGI app (FastAPI, the optional `serve` extra);
`batcher` runs the one engine thread every request shares; `assembly` turns token ids into the text
a response carries (reasoning apart from the answer, stop strings); `schemas` holds the wire format
and `errors` the OpenAI-style error bodies. Nothing is imported here, so the FastAPI-free parts load
without the extra.
"""
