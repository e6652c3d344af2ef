"""The `gpt-oss-triton` command, end to end on the CPU."""
import io
import json
import re
import argparse
import subprocess
import sys

import pytest
import torch

from gpt_oss_triton.model.cli import build_parser, main


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
        assert not list(tmp_path.glob(".*"))  # no working directory left beside it
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
    """A bad sampling value fails as argparse fails, naming the flag (SamplingParams' own check)."""
    for flag, value, message in (("--top-p", "1.5", "top_p must be in (0, 1], got 1.5"),
                                 ("--temperature", "-1", "temperature must be in [0, 100]"),
                                 ("--top-k", "-2", "top_k must be an integer >= 0"),
                                 ("--max-new-tokens", "0", "must be >= 1")):
        with pytest.raises(SystemExit):
            main(["generate", "--prompt", "x", flag, value])
        assert f"argument {flag}: {message}" in capsys.readouterr().err


def test_help_shows_every_argument_and_its_default():
    """Guards --help: every argument of every command has a help text, and the defaults are shown (none where
    the default is None: the help text says what happens)."""
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, command in commands.items():
        for action in command._actions:
            assert action.help, f"{name}: {'/'.join(action.option_strings) or action.dest} has no help"
    text = commands["generate"].format_help()
    assert "(default: 128)" in text and "(default: bfloat16)" in text and "(default: None)" not in text
    assert "(default: tiny)" in commands["make-checkpoint"].format_help()


def test_unusable_device_or_backend_is_one_line_naming_the_flag(monkeypatch):
    """--device cuda on a torch without CUDA, a device torch does not know, the triton backend on the CPU
    outside the interpreter or in fp32: one line each, naming the flags (not backend='torch')."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the triton backend on the CPU, as in the tests without a GPU
    cases = [(["--device", "cuda"], r"--device cuda is not available: .*; use --device cpu$"),
             (["--device", "tpu7"], r"--device tpu7 is not a device torch knows \(cpu, cuda, cuda:N\)$"),
             (["--backend", "triton", "--dtype", "float32"],
              r"--backend triton runs bf16 activations .*, got torch.float32; use --backend torch for fp32$")]
    for flags, message in cases:
        with pytest.raises(SystemExit, match="^gpt-oss-triton: " + message):
            main(["generate", "--prompt", "x", *flags])
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(SystemExit, match=r"^gpt-oss-triton: --backend triton on the CPU runs only in Triton's "
                                         r"interpreter: .* or use --backend torch$"):
        main(["generate", "--prompt", "x", "--backend", "triton"])


def test_unknown_model_lists_the_presets():
    with pytest.raises(SystemExit, match=r"^gpt-oss-triton: gpt-oss-7b: no such directory, and not a preset "
                                         r"\(gpt-oss-20b, gpt-oss-120b, tiny, nano\)$"):
        main(["generate", "--model", "gpt-oss-7b", "--prompt", "x"])


def test_make_checkpoint_writes_all_or_nothing(tmp_path, monkeypatch):
    """Guards make-checkpoint against half-written directories: a failure while writing (a full disk, Ctrl-C),
    a missing --tokenizer and an existing target each end in one line, with nothing left beside the target."""
    from gpt_oss_triton.loader import synthetic

    target = tmp_path / "ckpt"
    written = synthetic.write_safetensors

    def fail_after_writing(error):
        def write(path, *args):
            written(path, *args)
            raise error
        return write

    for error, message in ((OSError(28, "No space left on device"), "No space left on device"),
                           (KeyboardInterrupt(), f"interrupted; nothing written to {target}")):
        monkeypatch.setattr(synthetic, "write_safetensors", fail_after_writing(error))
        with pytest.raises(SystemExit, match=message):
            main(["make-checkpoint", str(target)])
        assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    with pytest.raises(SystemExit, match=r"--tokenizer .*nope.json: no such file"):
        main(["make-checkpoint", str(target), "--tokenizer", str(tmp_path / "nope.json")])
    assert list(tmp_path.iterdir()) == []
    target.mkdir()
    (target / "mine.txt").write_text("keep")
    with pytest.raises(SystemExit, match=f"{target} already exists"):
        main(["make-checkpoint", str(target)])
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"] and [p.name for p in target.iterdir()] == ["mine.txt"]


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
