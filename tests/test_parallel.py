"""Tensor and expert parallelism end to end on the CPU (gloo), with the tiny model: torchrun'd ranks against one
process (tests/parallel_worker.py), the CLI's generate and serve over 2 ranks, and ranks that die or hang
mid-generation bringing the others down with a message within seconds."""
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
import torch

from gpt_oss_triton.loader import make_checkpoint
from gpt_oss_triton.model import PRESETS, GptOss
from gpt_oss_triton.model.server.app import create_app

TESTS = Path(__file__).resolve().parent
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
CLI = ["-m", "gpt_oss_triton.model.cli"]
TIMEOUT = 900  # a whole launch, on a shared 2-core machine
pytestmark = pytest.mark.slow


def _env(**extra) -> dict:
    # A generous peer timeout unless a test sets its own: a loaded CI machine can starve a rank's heartbeat.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "GPT_OSS_TRITON_PEER_TIMEOUT": "120",
            **extra}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    # Sharded at 1 MB: q, k and v of a layer sit in different files.
    return make_checkpoint(tmp_path_factory.mktemp("tp") / "tiny", PRESETS["tiny"], layout="hf", seed=3,
                           shard_bytes=1 << 20)


def _worker(checkpoint, ranks: int, backend: str, device: str = "cpu", **env) -> str:
    run = subprocess.run(TORCHRUN + [f"--nproc-per-node={ranks}", str(TESTS / "parallel_worker.py"), str(checkpoint),
                                     backend, device], capture_output=True, text=True, timeout=TIMEOUT,
                         env=_env(**env), cwd=TESTS)
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr[-6000:]}"
    return run.stdout


@pytest.mark.parametrize("ranks", [2, 4])  # 4 ranks > the tiny model's 2 KV heads: each is replicated
def test_torch_backend_matches_one_process(checkpoint, ranks):
    out = _worker(checkpoint, ranks, "torch")
    assert out.count("ok:") == 4, out


def test_triton_backend_two_ranks_in_the_interpreter(checkpoint):
    out = _worker(checkpoint, 2, "triton", TRITON_INTERPRET="1")
    assert out.count("ok:") == 2, out


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_triton_backend_two_gpus_with_cuda_graphs(checkpoint):
    """NCCL, one GPU per rank; the decode steps (with their all-reduces, the input broadcast and the logits'
    all-gather) replay as each rank's CUDA graph."""
    out = _worker(checkpoint, 2, "triton", "cuda")
    assert out.count("ok:") == 1, out


class _Proc:
    """A child process whose stdout and stderr are collected as they come."""

    def __init__(self, args, env):
        self.p = subprocess.Popen([sys.executable, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, cwd=TESTS)
        self.out, self.err = [], []
        for stream, sink in ((self.p.stdout, self.out), (self.p.stderr, self.err)):
            threading.Thread(target=lambda s=stream, k=sink: k.extend(iter(lambda: s.read(1), "")), daemon=True).start()

    def text(self) -> str:
        return "".join(self.out)

    def errors(self) -> str:
        return "".join(self.err)

    def wait_for_text(self, n_chars: int, timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while len(self.text()) < n_chars:
            assert self.p.poll() is None, f"exited early ({self.p.returncode}):\n{self.errors()[-4000:]}"
            assert time.monotonic() < deadline, "no output in time"
            time.sleep(0.05)

    def exit_within(self, seconds: float) -> int:
        try:
            return self.p.wait(seconds)
        except subprocess.TimeoutExpired:
            self.p.kill()
            raise AssertionError(f"still running {seconds} s later; stderr:\n{self.errors()[-4000:]}") from None


GENERATE = CLI + ["generate", "--prompt", "ab", "--max-new-tokens", "4000", "--dtype", "float32", "--temperature", "0"]


def _ranks(n: int, args, **env) -> list[_Proc]:
    """n ranks started by hand, as a launcher would (no torchrun agent to clean up after them)."""
    base = dict(WORLD_SIZE=str(n), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), **env)
    return [_Proc(args, _env(RANK=str(r), LOCAL_RANK=str(r), **base)) for r in range(n)]


def test_a_hung_rank_is_caught_by_the_watchdog():
    """Rank 1 stops (SIGSTOP) mid-generation: its sockets stay open, so only the heartbeat can tell; rank 0 ends
    within the peer timeout with a message naming it."""
    r0, r1 = _ranks(2, GENERATE, GPT_OSS_TRITON_PEER_TIMEOUT="3")
    try:
        r0.wait_for_text(12)
        os.kill(r1.p.pid, signal.SIGSTOP)
        assert r0.exit_within(20) != 0
        assert "gpt-oss-triton: rank 0 of 2: rank 1 stopped answering" in r0.errors()
    finally:
        r1.p.kill()
        r0.p.kill()


def test_a_killed_rank_0_ends_the_followers():
    r0, r1 = _ranks(2, GENERATE)
    try:
        r0.wait_for_text(12)
        r0.p.kill()
        assert r1.exit_within(10) != 0
        assert "gpt-oss-triton: rank 1 of 2:" in r1.errors()
    finally:
        r1.p.kill()


def _children(pid: int) -> dict[int, int]:
    """RANK -> pid of the processes whose parent is `pid` (Linux /proc)."""
    out = {}
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and f"PPid:\t{pid}\n" in (proc / "status").read_text():
                env = dict(kv.split("=", 1) for kv in (proc / "environ").read_text().split("\0") if "=" in kv)
                if "RANK" in env:
                    out[int(env["RANK"])] = int(proc.name)
        except OSError:
            continue
    return out


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="finds torchrun's workers in /proc")
def test_killing_a_rank_under_torchrun_ends_the_job():
    job = _Proc(TORCHRUN[1:] + ["--nproc-per-node=2"] + GENERATE, _env())
    try:
        job.wait_for_text(12)
        os.kill(_children(job.p.pid)[1], signal.SIGKILL)
        assert job.exit_within(20) != 0
        assert "gpt-oss-triton: rank 0 of 2:" in job.errors() or "exitcode  : -9" in job.errors()
    finally:
        job.p.kill()


def test_generate_over_two_ranks_gives_the_text_of_one_process(capsys):
    from gpt_oss_triton.model.cli import main

    main(["generate", "--prompt", "The ranks", "--max-new-tokens", "16", "--dtype", "float32", "--temperature", "0"])
    want = capsys.readouterr().out
    run = subprocess.run(TORCHRUN + ["--nproc-per-node=2", *CLI, "generate", "--prompt", "The ranks",
                                     "--max-new-tokens", "16", "--dtype", "float32", "--temperature", "0"],
                         capture_output=True, text=True, timeout=TIMEOUT, env=_env(), cwd=TESTS)
    assert run.returncode == 0, run.stderr[-4000:]
    assert run.stdout == want


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def test_serve_over_two_ranks_answers_like_one_process():
    from test_server import MAX_LEN, TIMEOUT as REQUEST_TIMEOUT, serving

    port = _free_port()
    job = _Proc(TORCHRUN[1:] + ["--nproc-per-node=2", *CLI, "serve", "--port", str(port), "--dtype", "float32",
                                "--max-len", str(MAX_LEN), "--max-batch", "4", "--model-name", "tiny"], _env())
    # The tiny model's replies are gibberish bytes: the text completions carry them; chat replies (no harmony
    # channels in them) are compared by what the API says of them.
    requests = [
        dict(kind="text", prompt="Split over two", max_tokens=20, temperature=0),
        dict(kind="text", prompt="Sampled", max_tokens=16, seed=7),
        dict(kind="chat", messages=[{"role": "user", "content": "Hello there"}], max_tokens=24, temperature=0),
    ]

    def answers(base: str) -> list:
        with openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=REQUEST_TIMEOUT) as client:
            out = []
            for r in requests:
                kw = {k: v for k, v in r.items() if k != "kind"}
                if r["kind"] == "chat":
                    c = client.chat.completions.create(model="tiny", **kw)
                    out.append((c.choices[0].message.content, c.choices[0].finish_reason, c.usage.completion_tokens))
                else:
                    out.append(client.completions.create(model="tiny", **kw).choices[0].text)
            stream = client.completions.create(model="tiny", stream=True, max_tokens=12, temperature=0,
                                               prompt="streamed")
            out.append("".join(c.choices[0].text for c in stream if c.choices))
            return out

    try:
        torch.set_num_threads(1)
        model = GptOss.from_pretrained("tiny", dtype=torch.float32, device="cpu")
        with serving(create_app(model, model.tokenizer, model_name="tiny", max_batch=4, max_len=MAX_LEN)) as base:
            want = answers(base)
        base, deadline = f"http://127.0.0.1:{port}", time.monotonic() + TIMEOUT
        while not _answers(f"{base}/v1/models"):
            assert job.p.poll() is None and time.monotonic() < deadline, job.errors()[-4000:]
            time.sleep(0.2)
        assert all(want[i] for i in (0, 1, 3)), want
        assert answers(base) == want
    finally:
        job.p.send_signal(signal.SIGINT)
        try:
            job.p.wait(30)
        except subprocess.TimeoutExpired:
            job.p.kill()
