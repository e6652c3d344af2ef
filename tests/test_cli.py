"""The `gpt-oss-triton` command, end to end on the CPU."""
import io
import json
import re
import subprocess
import sys

import pytest

from gpt_oss_triton.model.cli import main


def test_generate_on_the_embedded_default(capsys):
    assert main(["generate", "--prompt", "Hello", "--max-new-tokens", "8", "--seed", "3"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("Hello")
    assert "embedded 'tiny' model" in err and "gibberish" in err
    assert "8 new tokens" in err and "tok/s" in err
    assert main(["generate", "--prompt", "Hello", "--max-new-tokens", "8", "--seed", "3"]) == 0
    assert capsys.readouterr().out == out  # deterministic under a seed


def test_make_checkpoint_then_generate_from_it(tmp_path, capsys):
    outs = []
    for layout in ("hf", "original"):
        assert main(["make-checkpoint", str(tmp_path / layout), "--layout", layout, "--seed", "0"]) == 0
        assert (tmp_path / layout / "tokenizer.json").is_file()  # the built-in byte-level one
        capsys.readouterr()
        assert main(["generate", "--model", str(tmp_path / layout), "--prompt", "abc", "--max-new-tokens", "6",
                     "--temperature", "0"]) == 0
        outs.append(capsys.readouterr().out)
    # Seed 0 of the tiny preset is the embedded default: the same greedy text from both layouts and from it.
    assert main(["generate", "--prompt", "abc", "--max-new-tokens", "6", "--temperature", "0"]) == 0
    assert outs[0] == outs[1] == capsys.readouterr().out


def test_checkpoint_without_tokenizer(tmp_path):
    from gpt_oss_triton.loader import make_checkpoint
    from gpt_oss_triton.model import PRESETS, Tokenizer

    path = make_checkpoint(tmp_path / "m", PRESETS["tiny"], layout="hf")
    with pytest.raises(SystemExit, match="has no tokenizer.json; pass --tokenizer"):
        main(["generate", "--model", str(path), "--prompt", "x"])
    Tokenizer.byte_level().save(tmp_path / "tok.json")
    assert main(["generate", "--model", str(path), "--tokenizer", str(tmp_path / "tok.json"), "--prompt", "x",
                 "--max-new-tokens", "2"]) == 0


def test_chat_mode(capsys):
    assert main(["generate", "--chat", "--prompt", "Hi", "--reasoning", "low", "--max-new-tokens", "5",
                 "--temperature", "0"]) == 0
    assert "prompt tokens" in capsys.readouterr().err


def test_bad_arguments_exit_with_a_message(capsys):
    with pytest.raises(SystemExit, match="top_p must be in"):
        main(["generate", "--prompt", "x", "--top-p", "1.5"])
    with pytest.raises(SystemExit):
        main(["generate", "--prompt", "x", "--max-new-tokens", "0"])
    assert "must be >= 1" in capsys.readouterr().err


def test_console_script_is_installed():
    r = subprocess.run([sys.executable, "-m", "gpt_oss_triton.model.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "make-checkpoint" in r.stdout


def test_bad_model_directory_exits_with_its_name(tmp_path):
    with pytest.raises(SystemExit, match=f"{tmp_path}: unknown layout"):
        main(["generate", "--model", str(tmp_path), "--prompt", "x"])


def _prompt_tokens(err: str) -> list[int]:
    return [int(m) for m in re.findall(r"\[(\d+) prompt tokens", err)]


def test_interactive_chat_keeps_the_conversation(monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("Hi\nHi\n/reset\nHi\n"))  # then end of input: quits
    assert main(["chat", "--reasoning", "low", "--max-new-tokens", "4", "--temperature", "0"]) == 0
    out, err = capsys.readouterr()
    first, second, after_reset = _prompt_tokens(err)
    assert second > first  # the first exchange is in the second prompt
    assert after_reset == first
    assert out.count(">>> ") == 5 and "/exit or Ctrl-D quits" in err


def test_chat_reports_a_turn_that_does_not_fit_and_goes_on(monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("x" * 200 + "\n/exit\n"))
    assert main(["chat", "--model", "tiny", "--max-new-tokens", "131000"]) == 0
    assert "exceeds the model's context" in capsys.readouterr().err


def test_bench_prints_and_writes_every_batch(tmp_path, capsys):
    path = tmp_path / "bench.json"
    assert main(["bench", "--batch", "1", "3", "--prompt-len", "5", "--new-tokens", "3", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "copy bandwidth" in out and "% of roof" in out
    record = json.loads(path.read_text())
    assert record["backend"] == "torch" and {"commit", "date", "torch", "triton", "device"} <= record.keys()
    assert [r["batch"] for r in record["results"]] == [1, 3]
    for r in record["results"]:
        assert r["decode_steps"] == 2 and r["prefill_tokens_per_s"] > 0 and 0 < r["roof_fraction"] < 1
        assert r["peak_memory_bytes"] is None  # no CUDA peak on the CPU
    assert record["results"][1]["budget_bytes"] > record["results"][0]["budget_bytes"]  # batch 3 over batch 1
    with pytest.raises(SystemExit):
        main(["bench", "--new-tokens", "1"])
