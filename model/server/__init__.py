"""An OpenAI-compatible HTTP server (`gpt-oss-triton serve`).

One module per protocol over shared pieces: `chat_completions` (/v1/chat/completions), `completions`
(/v1/completions) and `responses` (/v1/responses) mount their routes on the app that
`app.create_app(model, tokenizer, ...)` builds (FastAPI, the optional `serve` extra). Shared: `generation`
(a request's tokenising, limits, submission, deltas and server-sent events), `batcher` (the one engine thread
every request shares), `assembly` (token ids to the text a response carries: reasoning apart from the answer
and tool calls, stop strings), `schemas` (the wire format), `body` (request bodies parsed and checked off the
event loop), `security` (the checks every request passes first: Host, Content-Type, body size and time),
`metrics` (Prometheus) and `errors` (OpenAI-style error bodies); the model's `tool_calls` (tools and
tool_choice to a prompt, tool calls from a reply) serves every chat protocol and the Python API. `serving`
runs the app under uvicorn with a graceful shutdown. Nothing is imported here, so the FastAPI-free parts load
without the extra.
"""

# What the server answers, method and path (the CLI's help lists them; a test checks them against the app's
# routes). The OpenAPI pages (`--docs`) come on top.
ROUTES = ("POST /v1/chat/completions", "POST /v1/completions", "POST /v1/responses", "GET /v1/responses/{id}",
          "GET /v1/models", "GET /v1/stats", "GET /metrics")
