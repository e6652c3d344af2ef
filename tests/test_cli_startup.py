"""What `gpt-oss-triton serve` and `bench --static` tell a user: a port in use in one line before anything
claims to start, startup stages on stderr, a clean exit with no nanobind leak report, kernels compiled n of N;
and help that matches the code (the endpoint list against the server's routes, make-checkpoint's target)."""
import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpt_oss_triton.model import cli, server, static_model
from gpt_oss_triton.model.server.app import create_app
from scripted_model import ScriptedModel

SERVE = [sys.executable, "-m", "gpt_oss_triton.model.cli", "serve", "--max-batch", "1", "--max-len", "64"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def test_serve_on_a_port_in_use_is_one_line_and_fails_first():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run(SERVE + ["--port", str(port)], capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode != 0
    assert r.stderr.splitlines() == [f"gpt-oss-triton: port {port} on 127.0.0.1 is in use: stop what listens "
                                     "there or pass another --port"], r.stderr
    assert r.stdout == ""


def test_serve_shows_its_stages_and_exits_on_sigterm_without_leak_reports(tmp_path):
    log = (tmp_path / "serve.log").open("w+")
    process = subprocess.Popen(SERVE + ["--port", "0"], stdout=log, stderr=subprocess.STDOUT, env=ENV)
    try:
        deadline = time.monotonic() + 300
        while "gpt-oss-triton: serving" not in (log.seek(0) or log.read()):
            assert process.poll() is None and time.monotonic() < deadline, log.read()
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    log.seek(0)
    text = log.read()
    stages = re.findall(r"^gpt-oss-triton: \[(\d)/3\] ", text, re.M)
    assert stages == ["1", "2", "3"] and text.index("[3/3]") < text.index("gpt-oss-triton: serving"), text
    assert "nanobind" not in text and "leaked" not in text, text


def test_serving_run_gives_the_frozen_objects_back(monkeypatch):
    """The leak reports' cause: objects frozen by gc.freeze outlive the interpreter's shutdown."""
    import gc

    from gpt_oss_triton.model.server import serving

    calls = []
    monkeypatch.setattr(serving.gc, "freeze", lambda: calls.append("freeze"))
    monkeypatch.setattr(serving.gc, "unfreeze", lambda: calls.append("unfreeze"))
    monkeypatch.setattr(serving.Server, "run", lambda self, sockets=None: calls.append(("run", sockets)))
    app = create_app(ScriptedModel(300, lambda ids: [0]), _byte_level(), max_batch=1, max_len=16)
    serving.run(app, sockets=["s"], host="127.0.0.1", port=0, shutdown_timeout=1, read_timeout=1)
    assert calls == ["freeze", ("run", ["s"]), "unfreeze"] and gc.isenabled()


def _byte_level():
    from gpt_oss_triton.model import Tokenizer

    return Tokenizer.byte_level()


def _routes(routes) -> set[str]:
    """"METHOD /path" of every route, into included routers (newer FastAPI keeps them apart, their paths
    prefixed already)."""
    found = set()
    for route in routes:
        if hasattr(route, "original_router"):
            found |= _routes(route.original_router.routes)
        elif hasattr(route, "methods"):
            found |= {f"{method} {re.sub(r'{[^}]*}', '{id}', route.path)}" for method in route.methods - {"HEAD"}}
    return found


def test_help_lists_every_route_of_the_server():
    tok = _byte_level()
    app = create_app(ScriptedModel(tok.vocab_size, lambda ids: [0]), tok, max_batch=1, max_len=16)
    assert _routes(app.routes) == set(server.ROUTES)
    serve = next(action for action in cli.build_parser()._subparsers._group_actions[0]._choices_actions
                 if action.dest == "serve")
    listed = serve.help.split("serve an OpenAI-compatible API: ", 1)[1]
    assert listed.split(", ") == [route.split()[1] for route in server.ROUTES]
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert [route for route in server.ROUTES if f"`{route}`" not in readme] == []  # the README names each too


def test_make_checkpoint_help_and_readme_say_what_it_accepts(tmp_path, capsys):
    help_text = " ".join(cli.build_parser()._subparsers._group_actions[0].choices["make-checkpoint"]
                         .format_help().split())
    readme = " ".join((Path(__file__).resolve().parents[1] / "README.md").read_text().split())
    assert "must not exist, or be an empty directory" in help_text
    assert "must not exist, or be an empty directory" in readme
    (tmp_path / "empty").mkdir()
    assert cli.main(["make-checkpoint", str(tmp_path / "empty")]) == 0  # as both say
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(SystemExit, match="full already exists"):
        cli.main(["make-checkpoint", str(tmp_path / "full")])


def test_bench_static_counts_the_kernels_it_compiles(monkeypatch):
    monkeypatch.setattr(static_model, "_compile_job", lambda i: f"compiled {i}")
    monkeypatch.setattr(static_model, "_JOBS", [])
    monkeypatch.setenv("TRITON_DEFAULT_FP_FUSION", "1")
    err = io.StringIO()
    assert static_model.compile_all([("launch", {}, {})] * 3, 90, progress=err) == \
        ["compiled 0", "compiled 1", "compiled 2"]
    assert err.getvalue().split("\r")[1:] == ["static model: compiled 1 of 3 kernels for sm_90",
                                              "static model: compiled 2 of 3 kernels for sm_90",
                                              "static model: compiled 3 of 3 kernels for sm_90\n"]
