"""The `gpt-oss-triton` command: generate text, serve an OpenAI-compatible API, or write a synthetic checkpoint."""
import argparse
import sys
from pathlib import Path

import torch

DEFAULT_MODEL = "tiny"
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def _positive_int(s: str) -> int:
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="checkpoint directory (Hugging Face or original layout) or a preset: tiny, gpt-oss-20b, "
                        "gpt-oss-120b (seeded random weights). Default: the embedded tiny model")
    p.add_argument("--tokenizer", default=None, help="tokenizer.json to use instead of the checkpoint's own")
    p.add_argument("--backend", choices=("torch", "triton"), default=None,
                   help="default: triton on a GPU, the torch reference on the CPU")
    p.add_argument("--device", default=None, help="default: cuda when there is a GPU, else cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpt-oss-triton", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate text from a prompt, streaming it to stdout")
    _add_model_args(g)
    g.add_argument("--prompt", required=True, help="the prompt text (with --chat: the user's message)")
    g.add_argument("--chat", action="store_true", help="render the prompt as a harmony chat; show reasoning and answer apart")
    g.add_argument("--reasoning", choices=("low", "medium", "high"), default="medium", help="harmony reasoning effort")
    g.add_argument("--system", default=None, help="with --chat: developer instructions")
    g.add_argument("--max-new-tokens", type=_positive_int, default=128)
    g.add_argument("--temperature", type=float, default=1.0, help="0 is greedy")
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=0, help="0: off")
    g.add_argument("--seed", type=int, default=None)

    s = sub.add_parser("serve", help="serve an OpenAI-compatible API (/v1/chat/completions, /v1/completions)")
    _add_model_args(s)
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on every request")
    s.add_argument("--model-name", default=None,
                   help="the model id clients send (default: the --model directory's name, or 'tiny')")
    s.add_argument("--max-batch", type=_positive_int, default=8, help="requests decoded together")
    s.add_argument("--max-len", type=_positive_int, default=4096, help="tokens per request, prompt included")
    s.add_argument("--max-body-bytes", type=_positive_int, default=1 << 20, help="largest request body accepted")

    m = sub.add_parser("make-checkpoint", help="write a checkpoint of seeded random weights in the real layout")
    m.add_argument("out", type=Path)
    m.add_argument("--preset", default="tiny", choices=("tiny", "gpt-oss-20b", "gpt-oss-120b"))
    m.add_argument("--layout", default="hf", choices=("hf", "original"))
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--shard-size", type=float, default=5.0, help="Hugging Face layout: GB per shard")
    m.add_argument("--tokenizer", type=Path, default=None,
                   help="tokenizer.json to copy beside the weights (default: the built-in byte-level one)")
    return parser


def _load(args):
    from . import GptOss, Tokenizer

    name = args.model or DEFAULT_MODEL
    if args.model is None:
        print(f"gpt-oss-triton: no --model given: using the embedded '{DEFAULT_MODEL}' model with seeded random "
              "weights, so the text is gibberish. Pass --model DIR for real weights.", file=sys.stderr)
    try:
        model = GptOss.from_pretrained(name, backend=args.backend, dtype=DTYPES[args.dtype], device=args.device)
        tokenizer = Tokenizer.from_file(args.tokenizer) if args.tokenizer else model.tokenizer
    except (ValueError, FileNotFoundError) as e:  # bad checkpoint, tokenizer or backend: the message names it
        raise SystemExit(f"gpt-oss-triton: {e}") from None
    if tokenizer is None:
        raise SystemExit(f"gpt-oss-triton: {name} has no tokenizer.json; pass --tokenizer FILE")
    if tokenizer.vocab_size > model.config.vocab_size:
        raise SystemExit(f"gpt-oss-triton: the tokenizer has {tokenizer.vocab_size} ids but the model's vocabulary "
                         f"only {model.config.vocab_size}")
    return model, tokenizer


def cmd_generate(args) -> int:
    from . import harmony
    from .generate import SamplingParams, generate
    from .tokenizer import StreamDecoder

    try:
        params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                top_p=args.top_p, top_k=args.top_k, seed=args.seed)
    except ValueError as e:
        raise SystemExit(f"gpt-oss-triton: {e}") from None
    model, tok = _load(args)
    if args.chat:
        messages = ([{"role": "developer", "content": args.system}] if args.system else [])
        messages.append({"role": "user", "content": args.prompt})
        prompt = harmony.render(tok, messages, reasoning=args.reasoning)
        stop = harmony.stop_tokens_for_assistant_actions(tok)
        parser = harmony.StreamParser(tok)
    else:
        prompt = tok.encode(args.prompt)
        stop = {tok.token_id("<|endoftext|>")}
        parser, decoder = None, StreamDecoder(tok)
    try:
        gen = generate(model, prompt, params, stop_tokens=stop)
    except ValueError as e:
        raise SystemExit(f"gpt-oss-triton: {e}") from None

    out = sys.stdout
    channel = None
    if not args.chat:
        out.write(args.prompt)
    for token in gen:
        if parser is None:
            out.write(decoder.feed(token))
        else:
            text = parser.feed(token)
            if text and parser.channel != channel:
                out.write(f"{'' if channel is None else chr(10)}[{parser.channel or 'message'}] ")
                channel = parser.channel
            out.write(text)
        out.flush()
    out.write((decoder.flush() if parser is None else "") + "\n")
    out.flush()
    s = gen.stats
    print(f"[{s.prompt_tokens} prompt tokens in {s.prefill_s:.3f} s; {s.new_tokens} new tokens, "
          f"decode {s.decode_tokens_per_s:.1f} tok/s; stopped by {s.stopped_by}; backend {model.backend} on "
          f"{model.embedding.weight.device}]", file=sys.stderr)
    return 0


def cmd_serve(args) -> int:
    try:
        import uvicorn

        from .server.app import create_app
    except ImportError as e:
        raise SystemExit(f"gpt-oss-triton: serve needs the 'serve' extra ({e.name} is missing): "
                         "pip install 'gpt-oss-triton[serve]'") from None
    model, tok = _load(args)
    name = args.model_name or (Path(args.model).name if args.model else DEFAULT_MODEL)
    try:
        app = create_app(model, tok, model_name=name, api_key=args.api_key, max_batch=args.max_batch,
                         max_len=args.max_len, max_body_bytes=args.max_body_bytes)
    except ValueError as e:
        raise SystemExit(f"gpt-oss-triton: {e}") from None
    print(f"gpt-oss-triton: serving {name!r} on http://{args.host}:{args.port}/v1", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port)
    return 0


def cmd_make_checkpoint(args) -> int:
    import shutil

    from ..loader import make_checkpoint
    from .config import GptOssConfig

    out = make_checkpoint(args.out, GptOssConfig.preset(args.preset), layout=args.layout, seed=args.seed,
                          shard_bytes=int(args.shard_size * 1e9))
    if args.tokenizer:
        shutil.copyfile(args.tokenizer, out / "tokenizer.json")
    else:
        from .tokenizer import Tokenizer
        Tokenizer.byte_level().save(out / "tokenizer.json")
    print(f"wrote {args.preset} ({args.layout} layout, seed {args.seed}) to {out}", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return {"generate": cmd_generate, "serve": cmd_serve, "make-checkpoint": cmd_make_checkpoint}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
