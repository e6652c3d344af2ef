"""The `gpt-oss-triton` command: generate text, chat, benchmark, serve an OpenAI-compatible API, write a
synthetic checkpoint, or evaluate a nano model."""
import argparse
import errno
import os
import sys
from pathlib import Path

import torch

from . import server
from .config import PRESETS

DEFAULT_MODEL = "tiny"
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def _positive_int(s: str) -> int:
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _positive_float(s: str) -> float:
    v = float(s)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {s}")
    return v


def _non_negative_float(s: str) -> float:
    v = float(s)
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {s}")
    return v


def _port(s: str) -> int:
    v = int(s)
    if not 0 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0 to 65535 (0: any free port), got {v}")
    return v


def _at_least_2(s: str) -> int:
    v = int(s)
    if v < 2:
        raise argparse.ArgumentTypeError(f"must be >= 2 (the first token comes with the prefill), got {v}")
    return v


def _sampling_field(field: str, convert):
    """An argparse type for SamplingParams' `field`, checked as SamplingParams checks it, so that a bad value
    fails naming its flag."""
    def parse(text: str):
        from .runtime.sampling import SamplingParams

        value = convert(text)  # not a number: argparse's own "invalid int value"
        try:
            SamplingParams(**{field: value})
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e).split(": ", 1)[-1]) from None
        return value

    parse.__name__ = convert.__name__
    return parse


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none (None, an unset flag): there the help says
    what happens."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="checkpoint directory (Hugging Face or original layout), nano (the trained gpt-oss-nano "
                        "shipped with the package) or a preset: "
                        f"{', '.join(p for p in PRESETS if p != 'nano')} (seeded random weights). "
                        "Default: the embedded tiny model")
    p.add_argument("--tokenizer", default=None, help="tokenizer.json to use instead of the checkpoint's own")
    p.add_argument("--backend", choices=("torch", "triton"), default=None,
                   help="default: triton on a GPU, the torch reference on the CPU")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N. Default: cuda when there is a GPU, else cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16", help="weights and activations")
    p.add_argument("--tensor-parallel", type=_positive_int, default=None, metavar="N",
                   help="split the model over N GPUs (N processes: torchrun --nproc-per-node N gpt-oss-triton ...); "
                        "default: torchrun's WORLD_SIZE, else 1")


def _add_sampling_args(p: argparse.ArgumentParser, max_new_tokens: int) -> None:
    p.add_argument("--max-new-tokens", type=_positive_int, default=max_new_tokens, help="tokens to generate at most")
    p.add_argument("--temperature", type=_sampling_field("temperature", float), default=1.0, help="0 is greedy")
    p.add_argument("--top-p", type=_sampling_field("top_p", float), default=1.0,
                   help="keep the most likely tokens until they hold this much probability (1: off)")
    p.add_argument("--top-k", type=_sampling_field("top_k", int), default=0,
                   help="keep the k most likely tokens (0: off)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed. Default: a fresh one each run")


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
    add = lambda name, **kw: sub.add_parser(name, formatter_class=_HelpFormatter, **kw)  # noqa: E731

    g = add("generate", help="generate text from a prompt, streaming it to stdout")
    _add_model_args(g)
    g.add_argument("--prompt", required=True, help="the prompt text (with --chat: the user's message)")
    g.add_argument("--chat", action="store_true", help="render the prompt as a harmony chat; show reasoning and answer apart")
    g.add_argument("--reasoning", choices=("low", "medium", "high"), default="medium", help="harmony reasoning effort")
    g.add_argument("--system", default=None, help="with --chat: developer instructions")
    _add_sampling_args(g, max_new_tokens=128)

    c = add("chat", help="an interactive harmony chat: reasoning and answer shown apart")
    _add_model_args(c)
    _add_sampling_args(c, max_new_tokens=1024)
    c.add_argument("--reasoning", choices=("low", "medium", "high"), default="medium", help="harmony reasoning effort")
    c.add_argument("--system", default=None, help="developer instructions for the whole conversation")
    c.add_argument("--hide-reasoning", action="store_true", help="show the final answer only")

    b = add("bench", help="prefill and decode tokens/s per batch size, against the bandwidth roof")
    _add_model_args(b)
    b.add_argument("--batch", type=_positive_int, nargs="+", default=[1, 8, 64], help="batch sizes to run")
    b.add_argument("--prompt-len", type=_positive_int, default=1024, help="prompt tokens per sequence")
    b.add_argument("--new-tokens", type=_at_least_2, default=64, help="tokens generated per sequence")
    b.add_argument("--json", type=Path, default=None, help="also write the results (and the environment) here")
    b.add_argument("--static", action="store_true",
                   help="model the decode step from its compiled machine code instead (no GPU needed; --model: a "
                        "preset, default both real ones; --prompt-len: the context)")

    s = add("serve", help=f"serve an OpenAI-compatible API: {', '.join(r.split()[1] for r in server.ROUTES)}")
    _add_model_args(s)
    s.add_argument("--host", default="127.0.0.1", help="address to bind; 127.0.0.1 serves this machine only")
    s.add_argument("--port", type=_port, default=8000, help="port to listen on")
    s.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on every request")
    s.add_argument("--model-name", default=None,
                   help="the model id clients send (default: the --model directory's name, or 'tiny')")
    s.add_argument("--max-batch", type=_positive_int, default=8, help="requests decoded together")
    s.add_argument("--max-len", type=_positive_int, default=4096, help="tokens per request, prompt included")
    s.add_argument("--max-body-bytes", type=_positive_int, default=1 << 20, help="largest request body accepted")
    s.add_argument("--max-queue", type=_positive_int, default=256,
                   help="requests that may wait for a slot; more get a 429 with Retry-After")
    s.add_argument("--default-max-tokens", type=_positive_int, default=4096,
                   help="a chat reply's token limit (reasoning included) when the request sets none")
    s.add_argument("--read-timeout", type=_positive_float, default=30.0,
                   help="seconds a client has to send a request's headers, and then its body")
    s.add_argument("--shutdown-timeout", type=_non_negative_float, default=30.0,
                   help="on SIGTERM or SIGINT, seconds the requests in flight have to finish before they are "
                        "ended with an error (a second signal ends them at once)")
    s.add_argument("--allowed-hosts", nargs="+", default=[], metavar="NAME",
                   help="Host header names to answer besides loopback names, IP addresses and --host (a check "
                        "against DNS rebinding); '*' answers any")
    s.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="a web origin (e.g. http://localhost:3000) whose pages may call the API; repeatable. "
                        "Default: none")
    s.add_argument("--docs", action="store_true",
                   help="serve /docs, /redoc and /openapi.json (behind --api-key when it is set)")

    e = add("eval-nano", help="held-out figures of a nano model: greedy replies through the engine, per family")
    _add_model_args(e)
    e.set_defaults(model="nano", dtype="float32")
    e.add_argument("--per-family", type=_positive_int, default=50, help="conversations per family")
    e.add_argument("--seed", type=int, default=None, help="corpus seed of the conversations (default: the "
                                                          "held-out seed no training run draws from)")
    e.add_argument("--families", nargs="+", default=None, metavar="FAMILY",
                   help="evaluate only these (tool_call tool_answer no_tool arith1 arith2 greeting repeat)")
    e.add_argument("--max-new-tokens", type=_positive_int, default=160, help="tokens per reply at most")
    e.add_argument("--batch", type=_positive_int, default=8, help="conversations decoded together")
    e.add_argument("--threads", type=_positive_int, default=None,
                   help="torch CPU threads (on a busy machine 1 is much faster than several)")
    e.add_argument("--json", type=Path, default=None, help="also write the report (with a sample per family) here")

    m = add("make-checkpoint", help="write a checkpoint of seeded random weights in the real layout")
    m.add_argument("out", type=Path, help="directory to create (it must not exist, or be an empty directory); "
                                          "written whole or not at all")
    m.add_argument("--preset", default="tiny", choices=list(PRESETS), help="the model's shapes")
    m.add_argument("--layout", default="hf", choices=("hf", "original"),
                   help="Hugging Face (config.json + model*.safetensors) or the original one")
    m.add_argument("--seed", type=int, default=0, help="seed of the random weights (seed 0 of tiny is the "
                                                       "embedded default model)")
    m.add_argument("--shard-size", type=float, default=5.0, help="Hugging Face layout: GB per shard")
    m.add_argument("--tokenizer", type=Path, default=None,
                   help="tokenizer.json to copy beside the weights (default: the built-in byte-level one)")
    return parser


def _load(args, need_tokenizer: bool = True):
    from . import GptOss, Tokenizer
    from .gpt_oss import OptionError

    name = args.model or DEFAULT_MODEL
    if args.model is None and not getattr(args, "follower", False):
        print(f"gpt-oss-triton: no --model given: using the embedded '{DEFAULT_MODEL}' model with seeded random "
              "weights, so the text is gibberish. Pass --model DIR for real weights.", file=sys.stderr)
    try:
        model = GptOss.from_pretrained(name, backend=args.backend, dtype=DTYPES[args.dtype], device=args.device,
                                       tensor_parallel=args.tensor_parallel or 1)
        tokenizer = Tokenizer.from_file(args.tokenizer) if args.tokenizer else model.tokenizer
    except OptionError as e:  # a device or backend that cannot work here: named as its flag
        raise SystemExit(f"gpt-oss-triton: {e.cli()}") from None
    except (ValueError, FileNotFoundError) as e:  # bad checkpoint or tokenizer: the message names it
        raise SystemExit(f"gpt-oss-triton: {e}") from None
    if tokenizer is None and need_tokenizer:
        raise SystemExit(f"gpt-oss-triton: {name} has no tokenizer.json; pass --tokenizer FILE")
    if tokenizer is not None and tokenizer.vocab_size > model.config.vocab_size:
        raise SystemExit(f"gpt-oss-triton: the tokenizer has {tokenizer.vocab_size} ids but the model's vocabulary "
                         f"only {model.config.vocab_size}")
    if hasattr(args, "lead"):  # rank 0 of a tensor-parallel run: its steps run on every rank
        model = args.lead(model)
    return model, tokenizer


def _show_chat(stream, out, hide_reasoning: bool = False) -> None:
    """Writes a ChatStream's pieces, each message under its channel: "[analysis] ..." then "[final] ...".
    The CLI declares no tools, so no piece is a tool call; a call the model writes anyway is dropped, and
    a turn that shows no answer says why on stderr."""
    channel, hidden, answered = None, False, False
    for ch, text in stream:
        if hide_reasoning and ch == "analysis":
            hidden = True
            continue
        answered = answered or ch != "analysis"
        if ch != channel:
            out.write(f"{'' if channel is None else chr(10)}[{ch or 'message'}] ")
            channel = ch
        out.write(text)
        out.flush()
    out.write("\n")
    out.flush()
    for call in stream.dropped_calls:
        print(f"[the model called {call['recipient']!r}, which is no tool here: the call was dropped]",
              file=sys.stderr)
    if not answered:
        why = (f"no answer within the {stream.stats.new_tokens}-token limit (--max-new-tokens)"
               if stream.stats.stopped_by == "length" else "the model ended its turn without an answer")
        print(f"[{why}{'; its reasoning is hidden (--hide-reasoning)' if hidden else ''}]", file=sys.stderr)


def _quiet_tool_call_log() -> None:
    """The CLI says itself what became of a call the model made up: no second line from the library's log."""
    import logging

    logging.getLogger("gpt_oss_triton.model.tool_calls").addHandler(logging.NullHandler())


def _stats_line(stats, model) -> str:
    return (f"[{stats.prompt_tokens} prompt tokens in {stats.prefill_s:.3f} s; {stats.new_tokens} new tokens, "
            f"decode {stats.decode_tokens_per_s:.1f} tok/s; stopped by {stats.stopped_by}; backend {model.backend} on "
            f"{model.embedding.weight.device}]")


def cmd_generate(args) -> int:
    from .runtime.chat import stream_chat, stream_text

    params = _sampling(args)
    model, tok = _load(args)
    _quiet_tool_call_log()
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
    _quiet_tool_call_log()
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
            print("[conversation reset: the next message starts a new one"
                  f"{' (the --system instructions kept)' if start else ''}]", file=sys.stderr)
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
                               act_bytes=model.dtype.itemsize, tensor_parallel=model.tensor_parallel).total
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
        import uvicorn  # noqa: F401  (the extra's own name, even when `serving` was imported before)

        from .server import serving
        from .server.app import create_app
    except ImportError as e:
        raise SystemExit(f"gpt-oss-triton: serve needs the 'serve' extra ({e.name} is missing): "
                         'pip install -e ".[serve]" in the repository') from None
    # The port first: if it is taken, say so before a minute of loading, and before anything claims to start.
    try:
        sock = serving.bind(args.host, args.port)
    except OSError as e:
        raise SystemExit(f"gpt-oss-triton: {_bind_error(args.host, args.port, e)}") from None
    name = args.model_name or (Path(args.model).name if args.model else DEFAULT_MODEL)
    _stage(1, f"loading the model {args.model or DEFAULT_MODEL!r}")
    model, tok = _load(args)
    _stage(2, f"building the engine: {args.max_batch} slots of {args.max_len} tokens")
    try:
        app = create_app(model, tok, model_name=name, api_key=args.api_key, max_batch=args.max_batch,
                         max_len=args.max_len, max_body_bytes=args.max_body_bytes, max_queue=args.max_queue,
                         default_max_tokens=args.default_max_tokens, read_timeout=args.read_timeout,
                         allowed_hosts=[args.host, *args.allowed_hosts], cors_origins=args.cors_origin,
                         docs=args.docs)
    except ValueError as e:
        raise SystemExit(f"gpt-oss-triton: {e}") from None
    _stage(3, "starting the HTTP server")
    serving.run(app, sockets=[sock], host=args.host, port=args.port, shutdown_timeout=args.shutdown_timeout,
                read_timeout=args.read_timeout,
                on_listening=lambda url: print(f"gpt-oss-triton: serving {name!r} on {url}/v1", file=sys.stderr,
                                               flush=True))
    return 0


_SERVE_STAGES = 3


def _stage(n: int, what: str) -> None:
    """Progress of `serve`'s startup on stderr: loading can take minutes with nothing else to show."""
    print(f"gpt-oss-triton: [{n}/{_SERVE_STAGES}] {what}...", file=sys.stderr, flush=True)


def _bind_error(host: str, port: int, e: OSError) -> str:
    if e.errno == errno.EADDRINUSE:
        return f"port {port} on {host} is in use: stop what listens there or pass another --port"
    return f"cannot listen on {host} port {port} (--host, --port): {e.strerror or e}"


def cmd_make_checkpoint(args) -> int:
    from ..loader import make_checkpoint
    from .tokenizer import Tokenizer

    if args.tokenizer and not args.tokenizer.is_file():
        raise SystemExit(f"gpt-oss-triton: --tokenizer {args.tokenizer}: no such file")
    try:
        out = make_checkpoint(args.out, PRESETS[args.preset], layout=args.layout, seed=args.seed,
                              shard_bytes=int(args.shard_size * 1e9), tokenizer=args.tokenizer or Tokenizer.byte_level())
    except (ValueError, OSError) as e:  # the target exists, or the disk fills: nothing is left behind
        raise SystemExit(f"gpt-oss-triton: {e}") from None
    except KeyboardInterrupt:
        raise SystemExit(f"gpt-oss-triton: interrupted; nothing written to {args.out}") from None
    print(f"wrote {args.preset} ({args.layout} layout, seed {args.seed}) to {out}", file=sys.stderr)
    return 0


# What each command's engine asks of memory, (batch, context), checked on every rank of a parallel run first.
_PARALLEL_NEEDS = {
    "generate": lambda a: (1, a.max_new_tokens), "chat": lambda a: (1, a.max_new_tokens),
    "serve": lambda a: (a.max_batch, a.max_len), "bench": lambda a: (max(a.batch), a.prompt_len + a.new_tokens),
}


def cmd_eval_nano(args) -> int:
    import json

    from .nano import corpus
    from .nano.evaluate import FIGURES, evaluate, format_report

    unknown = sorted(set(args.families or ()) - FIGURES.keys())
    if unknown:
        raise SystemExit(f"gpt-oss-triton: unknown --families {', '.join(unknown)}; choose from {', '.join(FIGURES)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = _load(args)
    seed = corpus.HELD_OUT_SEED if args.seed is None else args.seed
    report = evaluate(model, tok, args.per_family, seed, args.families, args.max_new_tokens, args.batch)
    print(format_report(report))
    if args.json:
        args.json.write_text(json.dumps({**report, "model": args.model, "backend": model.backend}, indent=2) + "\n")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    commands = {"generate": cmd_generate, "chat": cmd_chat, "bench": cmd_bench, "serve": cmd_serve,
                "make-checkpoint": cmd_make_checkpoint, "eval-nano": cmd_eval_nano}
    if args.command in _PARALLEL_NEEDS:
        from .parallel import launch

        args.tensor_parallel = launch.tensor_parallel(args.tensor_parallel)
        if args.tensor_parallel > 1:  # rank 0 runs the command, the other ranks follow its steps
            return launch.run(commands[args.command], args, _load, _PARALLEL_NEEDS[args.command])
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
