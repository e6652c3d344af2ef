"""Train gpt-oss-nano: `python -m gpt_oss_triton.model.nano.train --out DIR [--steps N] [--resume]`.

Seeded end to end: the tokenizer is trained on the corpus of `--seed` (once, saved in DIR), the weights are
initialised from it, and step s trains on `corpus.batch_examples(seed, s)`, so a run resumed from its last
checkpoint (`DIR/checkpoint.pt`, written every `--save-every` steps with the optimizer) continues exactly.
The loss is on the reply only (what the model writes). Every `--eval-every` steps it logs, on a fixed
held-out batch, the teacher-forced loss, token accuracy and copy accuracy: the accuracy on the tokens of
strings the reply copies from the prompt (names, values, tool names), the figure that shows copying form.
Each save also exports the weights to DIR/weights-STEP (a checkpoint every backend loads).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

from ..config import GptOssConfig
from ..tokenizer import Tokenizer
from . import bpe, corpus
from .network import TrainableGptOss, export

@dataclasses.dataclass
class Batch:
    tokens: torch.Tensor  # [B, T] input ids
    targets: torch.Tensor  # [B, T] next ids, -100 where there is no loss (prompt, padding)
    copy: torch.Tensor  # [B, T] bool: the target is a token of a copied string


def make_batch(tokenizer: Tokenizer, examples: list) -> Batch:
    rows = []
    for e in examples:
        prompt, reply = corpus.encode(tokenizer, e)
        ids = prompt + reply
        copied = _copied_positions(tokenizer, reply, e.copies)
        rows.append((ids, len(prompt), {len(prompt) + i for i in copied}))
    T = max(len(ids) for ids, _, _ in rows) - 1
    pad = tokenizer.token_id("<|endoftext|>")
    tokens = torch.full((len(rows), T), pad, dtype=torch.long)
    targets = torch.full((len(rows), T), -100, dtype=torch.long)
    copy = torch.zeros((len(rows), T), dtype=torch.bool)
    for b, (ids, n_prompt, copied) in enumerate(rows):
        n = len(ids) - 1
        tokens[b, :n] = torch.tensor(ids[:-1])
        targets[b, n_prompt - 1:n] = torch.tensor(ids[n_prompt:])
        for p in copied:
            copy[b, p - 1] = True
    return Batch(tokens, targets, copy)


def _copied_positions(tokenizer: Tokenizer, reply: list[int], strings: list[str]) -> set[int]:
    """Indices in `reply` of the tokens of each copied string, wherever its ids occur."""
    out = set()
    for s in strings:
        pattern = tokenizer.encode(s, specials=False)
        for i in range(len(reply) - len(pattern) + 1):
            if reply[i:i + len(pattern)] == pattern:
                out.update(range(i, i + len(pattern)))
    return out


def loss_and_metrics(model, batch: Batch) -> tuple[torch.Tensor, dict]:
    logits = model(batch.tokens)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), ignore_index=-100)
    with torch.no_grad():
        right = logits.argmax(-1) == batch.targets
        scored = batch.targets != -100
        metrics = {"loss": loss.item(), "token_acc": (right & scored).sum().item() / max(scored.sum().item(), 1),
                   "copy_acc": (right & batch.copy).sum().item() / max(batch.copy.sum().item(), 1)}
    return loss, metrics


def _held_out(model, batch: Batch) -> tuple[torch.Tensor, dict]:
    model.eval()
    with torch.no_grad():
        return loss_and_metrics(model, batch)


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _save(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


@torch.enable_grad()  # whatever the caller's grad mode (a test module may have turned it off for the session)
def train(out: Path, *, seed: int = 0, steps: int = 1000, batch: int = 16, lr: float = 3e-3, warmup: int = 100,
          save_every: int = 250, eval_every: int = 100, log_every: int = 10, resume: bool = False,
          config: GptOssConfig | None = None, vocab: int = 1024, tokenizer_samples: int = 3000,
          threads: int | None = None, until: int | None = None, held_out: int = 32, log=print) -> TrainableGptOss:
    """Train (or, with resume, continue) the run in `out`; returns the model. See the module's docstring."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if threads:
        torch.set_num_threads(threads)
    config = config or GptOssConfig.preset("nano")
    tok_path = out / "tokenizer.json"
    if tok_path.exists():
        tokenizer = Tokenizer.from_file(tok_path)
    else:
        tokenizer = bpe.train_tokenizer(bpe.corpus_texts(seed, tokenizer_samples), vocab)
        tokenizer.save(tok_path)
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} ids, the config's vocabulary {config.vocab_size}")
    model = TrainableGptOss(config, seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    ckpt_path, start, spent = out / "checkpoint.pt", 0, 0.0
    if resume:
        if not ckpt_path.exists():
            raise FileNotFoundError(f"--resume: {ckpt_path} does not exist")
        state = torch.load(ckpt_path, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start, spent = state["step"], state.get("seconds", 0.0)
        log(f"resumed {ckpt_path} at step {start}")
    held_out = make_batch(tokenizer, corpus.examples(seed + corpus.HELD_OUT_SEED, held_out))
    (out / "run.json").write_text(json.dumps({"seed": seed, "steps": steps, "batch": batch, "lr": lr,
                                              "warmup": warmup, "vocab": vocab,
                                              "config": config.to_hf_dict()}, indent=2))
    if start == 0:
        _, h = _held_out(model, held_out)
        log(f"held-out step 0 loss {h['loss']:.4f} token_acc {h['token_acc']:.3f} copy_acc {h['copy_acc']:.3f}")
    tokens_seen = 0
    t0 = time.perf_counter()
    end = steps if until is None else min(until, steps)
    for step in range(start, end):
        b = make_batch(tokenizer, corpus.batch_examples(seed, step, batch))
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup)
        model.train()
        loss, m = loss_and_metrics(model, b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        tokens_seen += b.tokens.numel()
        done = step + 1
        if done % log_every == 0 or done == steps:
            elapsed = time.perf_counter() - t0
            log(f"step {done} loss {m['loss']:.4f} copy_acc {m['copy_acc']:.3f} lr {lr_at(step, steps, lr, warmup):.2e} "
                f"tok/s {tokens_seen / elapsed:.0f} min {(spent + elapsed) / 60:.1f}")
        if done % eval_every == 0 or done == end:
            _, h = _held_out(model, held_out)
            log(f"held-out step {done} loss {h['loss']:.4f} token_acc {h['token_acc']:.3f} copy_acc {h['copy_acc']:.3f}")
        if done % save_every == 0 or done == end:
            _save(ckpt_path, {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": done,
                              "seconds": spent + time.perf_counter() - t0, "padded_tokens": tokens_seen})
            weights = out / f"weights-{done}"
            if not weights.exists():
                export(model, weights, tokenizer)
            log(f"saved step {done} to {ckpt_path} and {weights}")
    return model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m gpt_oss_triton.model.nano.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="run directory (tokenizer, checkpoint, exports, log)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=1000, help="total steps (a resumed run continues to this)")
    p.add_argument("--batch", type=int, default=16, help="conversations per step")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--save-every", type=int, default=250)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--until", type=int, default=None, help="stop after this step (the schedule stays that of --steps)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    args = p.parse_args(argv)

    def log(line):
        print(line, flush=True)

    try:
        train(args.out, seed=args.seed, steps=args.steps, batch=args.batch, lr=args.lr, warmup=args.warmup,
              save_every=args.save_every, eval_every=args.eval_every, log_every=args.log_every,
              resume=args.resume, threads=args.threads, until=args.until, log=log)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"nano.train: {e}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
