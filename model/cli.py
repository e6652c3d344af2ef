"""The `gpt-oss-triton` command: generate text, chat, benchmark, serve an OpenAI-compatible API, or write a
synthetic checkpoint."""
import argparse
import os
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


def _at_least_2(s: str) -> int:
    v = int(s)
    if v < 2:
        raise argparse.ArgumentTypeError(f"must be >= 2 (the first token comes with the prefill), got {v}")
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


def _add_sampling_args(p: argparse.ArgumentParser, max_new_tokens: int) -> None:
    p.add_argument("--max-new-tokens", type=_positive_int, default=max_new_tokens)
    p.add_argument("--temperature", type=float, default=1.0, help="0 is greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="0: off")
    p.add_argument("--seed", type=int, default=None)


def _sampling(args):
    from .runtime.sampling import SamplingParams

    try:
        return SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                              top_p=args.top_p, top_k=args.top_k, seed=args.seed)
    except ValueError as e:
        raise SystemExit(f"gpt-oss-triton: {e}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpt-oss-triton", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate text from a prompt, streaming it to stdout")
    _add_model_args(g)
    g.add_argument("--prompt", required=True, help="the prompt text (with --chat: the user's message)")
    g.add_argument("--chat", action="store_true", help="render the prompt as a harmony chat; show reasoning and answer apart")
    g.add_argument("--reasoning", choices=("low", "medium", "high"), default="medium", help="harmony reasoning effort")
    g.add_argument("--system", default=None, help="with --chat: developer instructions")
    _add_sampling_args(g, max_new_tokens=128)

    c = sub.add_parser("chat", help="an interactive harmony chat: reasoning and answer shown apart")
    _add_model_args(c)
    _add_sampling_args(c, max_new_tokens=1024)
    c.add_argument("--reasoning", choices=("low", "medium", "high"), default="medium", help="harmony reasoning effort")
    c.add_argument("--system", default=None, help="developer instructions for the whole conversation")
    c.add_argument("--hide-reasoning", action="store_true", help="show the final answer only")

    b = sub.add_parser("bench", help="prefill and decode tokens/s per batch size, against the bandwidth roof")
    _add_model_args(b)
    b.add_argument("--batch", type=_positive_int, nargs="+", default=[1, 8, 64], help="batch sizes to run")
    b.add_argument("--prompt-len", type=_positive_int, default=1024, help="prompt tokens per sequence")
    b.add_argument("--new-tokens", type=_at_least_2, default=64, help="tokens generated per sequence")
    b.add_argument("--json", type=Path, default=None, help="also write the results (and the environment) here")
    b.add_argument("--static", action="store_true",
                   help="model the decode step from its compiled machine code instead (no GPU needed; --model: a "
                        "preset, default both real ones; --prompt-len: the context)")

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


def _load(args, need_tokenizer: bool = True):
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
    if tokenizer is None and need_tokenizer:
        raise SystemExit(f"gpt-oss-triton: {name} has no tokenizer.json; pass --tokenizer FILE")
    if tokenizer is not None and tokenizer.vocab_size > model.config.vocab_size:
        raise SystemExit(f"gpt-oss-triton: the tokenizer has {tokenizer.vocab_size} ids but the model's vocabulary "
                         f"only {model.config.vocab_size}")
    return model, tokenizer


def _show_chat(stream, out, hide_reasoning: bool = False) -> None:
    """Writes a ChatStream's pieces, each message under its channel: "[analysis] ..." then "[final] ..."."""
    channel = None
    for ch, text in stream:
        if hide_reasoning and ch == "analysis":
            continue
        if ch != channel:
            out.write(f"{'' if channel is None else chr(10)}[{ch or 'message'}] ")
            channel = ch
        out.write(text)
        out.flush()
    out.write("\n")
    out.flush()


def _stats_line(stats, model) -> str:
    return (f"[{stats.prompt_tokens} prompt tokens in {stats.prefill_s:.3f} s; {stats.new_tokens} new tokens, "
            f"decode {stats.decode_tokens_per_s:.1f} tok/s; stopped by {stats.stopped_by}; backend {model.backend} on "
            f"{model.embedding.weight.device}]")


def cmd_generate(args) -> int:
    from .runtime.chat import stream_chat, stream_text

    params = _sampling(args)
    model, tok = _load(args)
    try:
        if args.chat:
            messages = ([{"role": "developer", "content": args.system}] if args.system else [])
            messages.append({"role": "user", "content": args.prompt})
            stream = stream_chat(model, messages, params, reasoning=args.reasoning, tokenizer=tok)
        else:
            stream = stream_text(model, args.prompt, params, tokenizer=tok)
    except ValueError as e:
        raise SystemExit(f"gpt-oss-triton: {e}") from None
    out = sys.stdout
    if args.chat:
        _show_chat(stream, out)
    else:
        out.write(args.prompt)
        for text in stream:
            out.write(text)
            out.flush()
        out.write("\n")
    print(_stats_line(stream.stats, model), file=sys.stderr)
    return 0


def cmd_chat(args) -> int:
    from .runtime.chat import stream_chat

    params = _sampling(args)
    model, tok = _load(args)
    start = [{"role": "developer", "content": args.system}] if args.system else []
    history = list(start)
    print(f"gpt-oss-triton chat (reasoning: {args.reasoning}): /reset starts over, /exit or Ctrl-D quits",
          file=sys.stderr)
    while True:
        try:
            text = input(">>> ").strip()
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return 0
        if text in ("/exit", "/quit"):
            return 0
        if text == "/reset":
            history = list(start)
            continue
        if not text:
            continue
        turn = history + [{"role": "user", "content": text}]
        try:
            stream = stream_chat(model, turn, params, reasoning=args.reasoning, tokenizer=tok)
            _show_chat(stream, sys.stdout, args.hide_reasoning)
        except ValueError as e:  # e.g. the conversation no longer fits the context: /reset
            print(f"gpt-oss-triton: {e}", file=sys.stderr)
            continue
        except KeyboardInterrupt:  # stops this reply, keeps the conversation before it
            print("\n[interrupted]", file=sys.stderr)
            continue
        # The next prompt holds the answer; harmony.render drops this turn's reasoning once a user speaks again.
        history = turn + [m for m in stream.messages if m.get("role") == "assistant" and m["content"]]
        print(_stats_line(stream.stats, model), file=sys.stderr)


def cmd_bench(args) -> int:
    import json
    import platform

    if args.static:
        from .static_model import main as static_main
        models = [args.model] if args.model else ["gpt-oss-20b", "gpt-oss-120b"]
        return static_main(["--models", *models, "--batch", *map(str, args.batch), "--context", str(args.prompt_len),
                            "--workers", str(os.cpu_count() or 1)] + (["--json", str(args.json)] if args.json else []))

    from .runtime.benchmark import bench_generation
    from .budget import memory_budget
    from .environment import environment
    from .roofline import measure_copy_bandwidth

    model, _ = _load(args, need_tokenizer=False)
    device = model.embedding.weight.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    bandwidth = measure_copy_bandwidth(device, 1 << 30 if device.type == "cuda" else 1 << 27)
    env = environment(name)
    print(f"{args.model or DEFAULT_MODEL} on {name} ({model.backend} backend, torch {env['torch']}, "
          f"triton {env['triton']}, commit {env['commit']}); measured copy bandwidth {bandwidth / 1e9:.0f} GB/s; "
          f"prompt {args.prompt_len} tokens, {args.new_tokens} new tokens per sequence")
    header = ("batch", "prefill tok/s", "TTFT s", "decode tok/s", "ms/step", "roof ms/step", "% of roof", "peak GB",
              "budget GB")
    print(" | ".join(header))
    rows = []
    for batch in args.batch:
        try:
            r = bench_generation(model, batch, args.prompt_len, args.new_tokens, bandwidth)
        except torch.cuda.OutOfMemoryError as e:
            print(f"{batch} | out of memory: {str(e).splitlines()[0]}")
            torch.cuda.empty_cache()
            continue
        except ValueError as e:
            raise SystemExit(f"gpt-oss-triton: {e}") from None
        budget = memory_budget(model.config, batch, args.prompt_len + args.new_tokens,
                               act_bytes=model.dtype.itemsize).total
        rows.append(r.as_dict() | {"budget_bytes": budget})
        peak = f"{r.peak_memory_bytes / 1e9:.2f}" if r.peak_memory_bytes is not None else "-"
        print(f"{batch} | {r.prefill_tokens_per_s:.0f} | {r.prefill_s:.3f} | {r.decode_tokens_per_s:.1f} | "
              f"{r.decode_ms_per_step:.2f} | {1e3 * r.roof_decode_s / r.decode_steps:.2f} | "
              f"{100 * r.roof_fraction:.1f}% | {peak} | {budget / 1e9:.2f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({
            **env, "model": args.model or DEFAULT_MODEL, "backend": model.backend,
            "copy_bytes_per_s": bandwidth, "results": rows}, indent=1, allow_nan=False) + "\n")
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
    commands = {"generate": cmd_generate, "chat": cmd_chat, "bench": cmd_bench, "serve": cmd_serve,
                "make-checkpoint": cmd_make_checkpoint}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
