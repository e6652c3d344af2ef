"""gpt-oss-nano's kit: the seeded corpus, its tokenizer, training (and resuming it), the shipped weights in every
backend and in transformers, and eval-nano."""
import dataclasses
import json
import shutil

import pytest
import torch

from gpt_oss_triton.model import GptOss, GptOssConfig
from gpt_oss_triton.model.cli import main
from gpt_oss_triton.model.nano import WEIGHTS_DIR, bpe, corpus
from gpt_oss_triton.model.nano.evaluate import evaluate, replies, right, well_formed
from gpt_oss_triton.model.nano.train import train
from gpt_oss_triton.model.tokenizer import Tokenizer

# A nano-shaped graph small enough to train a few steps in a test: sliding then full attention with sinks,
# GQA, YaRN, top-2 of 4 MXFP4 experts.
MICRO = GptOssConfig(num_hidden_layers=2, num_experts=4, experts_per_token=2, vocab_size=352, hidden_size=64,
                     intermediate_size=32, head_dim=32, num_attention_heads=2, num_key_value_heads=1,
                     sliding_window=16, max_context=2048)


def _as_data(examples):
    return [dataclasses.asdict(e) for e in examples]


def test_the_corpus_is_a_function_of_its_seed():
    assert _as_data(corpus.examples(3, 40)) == _as_data(corpus.examples(3, 40))
    assert _as_data(corpus.examples(3, 40)) != _as_data(corpus.examples(4, 40))
    assert _as_data(corpus.batch_examples(3, 5, 8)) == _as_data(corpus.batch_examples(3, 5, 8))
    assert _as_data(corpus.batch_examples(3, 5, 8)) != _as_data(corpus.batch_examples(3, 6, 8))
    byte_level = Tokenizer.byte_level()
    a = [corpus.encode(byte_level, e) for e in corpus.examples(3, 10)]
    assert a == [corpus.encode(byte_level, e) for e in corpus.examples(3, 10)]


def test_copied_names_and_values_are_fresh_per_sample():
    """Nothing a reply copies comes from a pool small enough to memorise: tool names, parameter names and
    values of 300 tool calls are almost all distinct."""
    calls = [e.expect["call"] for e in corpus.examples(0, 300, families=["tool_call"])]
    names = [name for name, _ in calls]
    keys = [k for _, args in calls for k in args]
    values = [v for _, args in calls for v in args.values()]
    for what in (names, keys, values):
        assert len(set(what)) > 0.9 * len(what)


def test_a_value_has_the_same_ids_in_the_request_the_analysis_and_the_call():
    tokenizer = bpe.train_tokenizer(bpe.corpus_texts(0, 300), 400)
    for e in corpus.examples(1, 30, families=["tool_call"]):
        _, reply = corpus.encode(tokenizer, e)
        prompt_ids = corpus.encode(tokenizer, e)[0]
        call_start = max(i for i, t in enumerate(reply) if t == tokenizer.token_id("<|message|>"))
        for v in e.expect["call"][1].values():
            ids = tokenizer.encode(v)
            occurs = lambda seq: any(seq[i:i + len(ids)] == ids for i in range(len(seq)))  # noqa: E731
            assert occurs(prompt_ids) and occurs(reply[:call_start]) and occurs(reply[call_start:]), v


def test_the_tokenizer_puts_harmony_specials_after_its_vocabulary():
    tokenizer = bpe.train_tokenizer(bpe.corpus_texts(0, 200), 400)
    assert tokenizer.vocab_size == 400 + 21
    assert tokenizer.token_id("<|startoftext|>") == 400 and tokenizer.token_id("<|endofprompt|>") == 420
    assert tokenizer.encode("<|start|>x") == [tokenizer.token_id("<|start|>"), *tokenizer.encode("x")]


def _held_out_losses(lines):
    return {int(line.split()[2]): float(line.split()[4]) for line in lines if line.startswith("held-out")}


def test_a_few_training_steps_lower_the_loss_and_a_resumed_run_continues_exactly(tmp_path):
    kw = dict(seed=1, steps=8, batch=2, lr=1e-2, warmup=2, save_every=4, eval_every=4, config=MICRO, vocab=331,
              tokenizer_samples=100, held_out=4)
    lines = []
    straight = train(tmp_path / "a", log=lines.append, **kw)
    losses = _held_out_losses(lines)
    assert losses[8] < losses[0] - 0.5, losses

    (tmp_path / "b").mkdir()
    shutil.copy(tmp_path / "a" / "tokenizer.json", tmp_path / "b")
    train(tmp_path / "b", log=lambda _: None, until=4, **kw)
    resumed = train(tmp_path / "b", log=lambda _: None, resume=True, **kw)
    for name, t in straight.state_dict().items():
        assert torch.equal(t, resumed.state_dict()[name]), name
    exported = GptOss.from_pretrained(tmp_path / "a" / "weights-8", backend="torch", dtype=torch.float32)
    tokens = torch.randint(0, 320, (1, 30), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        # bf16 storage of the attention weights is all that differs: the experts were trained as MXFP4
        assert (exported(tokens) - straight.eval()(tokens)).abs().max() < 0.05


def test_resume_needs_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint.pt"):
        train(tmp_path, resume=True, steps=1, config=MICRO, vocab=331, tokenizer_samples=50, log=lambda _: None)


@pytest.fixture(scope="module")
def nano():
    if not (WEIGHTS_DIR / "config.json").is_file():
        pytest.fail(f"the shipped nano weights are missing from {WEIGHTS_DIR}")
    return GptOss.from_pretrained("nano", backend="torch", dtype=torch.float32, device="cpu")


def test_nano_loads_the_shipped_weights(nano):
    assert nano.config == GptOssConfig.preset("nano")
    assert nano.tokenizer.vocab_size <= nano.config.vocab_size
    assert sum(f.stat().st_size for f in WEIGHTS_DIR.iterdir()) <= 8 << 20


@pytest.mark.slow
def test_the_triton_backend_replies_as_the_torch_backend(nano):
    """Greedy replies of the shipped weights, token for token, on the Triton kernels and on the torch reference,
    both bf16: the prompt's prefill and a few decode steps (in the interpreter a decode step of nano takes
    seconds, so one held-out conversation; `eval-nano --backend triton` runs more)."""
    triton = GptOss.from_pretrained("nano", backend="triton", dtype=torch.bfloat16, device="cpu")
    reference = GptOss.from_pretrained("nano", backend="torch", dtype=torch.bfloat16, device="cpu")
    examples = corpus.examples(corpus.HELD_OUT_SEED, 1, families=["arith1"])
    ours = replies(triton, triton.tokenizer, examples, max_new_tokens=3, batch=1)
    theirs = replies(reference, reference.tokenizer, examples, max_new_tokens=3, batch=1)
    assert len(ours[0]) == 3 and ours == theirs


def test_transformers_loads_the_shipped_weights(nano):
    transformers = pytest.importorskip("transformers", reason="needs the transformers package (the test extra)")
    pytest.importorskip("accelerate", reason="needs the accelerate package: transformers reads MXFP4 through it")
    # on the CPU transformers must be told to dequantize, else it looks for hub kernels
    theirs = transformers.GptOssForCausalLM.from_pretrained(
        WEIGHTS_DIR, dtype=torch.float32, quantization_config=transformers.Mxfp4Config(dequantize=True)).eval()
    e = corpus.examples(corpus.HELD_OUT_SEED, 1, families=["tool_call"])[0]
    prompt, reply = corpus.encode(nano.tokenizer, e)
    tokens = torch.tensor([prompt + reply])
    with torch.inference_mode():
        diff = (theirs(input_ids=tokens).logits - nano(tokens)).abs().max()
    assert diff < 1e-3, diff


def test_eval_nano_reports_every_figure(capsys, tmp_path):
    assert main(["eval-nano", "--per-family", "1", "--families", "arith1", "no_tool", "--max-new-tokens", "8",
                 "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "well_formed" in out and "arith1" in out and "no_tool" in out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["families"]["arith1"]["n"] == 1 and set(report["figures"]) == {"well_formed", "arith1", "no_tool"}


def test_eval_checks_what_each_family_asks():
    """The checks themselves, on the corpus's own replies (always right) and on a wrong one."""
    tokenizer = Tokenizer.byte_level()

    for e in corpus.examples(0, 3, families=list(corpus.FAMILIES)):
        reply = corpus.encode(tokenizer, e)[1]
        assert well_formed(tokenizer, reply) and right(tokenizer, e, reply), e.family
    e = corpus.examples(0, 1, families=["tool_call"])[0]
    name, arguments = e.expect["call"]
    wrong = dataclasses.replace(e, reply={**e.reply, "tool_calls": [{"id": "c", "type": "function", "function": {
        "name": name, "arguments": json.dumps({k: v + "x" for k, v in arguments.items()})}}]})
    reply = corpus.encode(tokenizer, wrong)[1]
    assert well_formed(tokenizer, reply) and not right(tokenizer, e, reply)


def test_evaluate_runs_through_the_engine(nano):
    report = evaluate(nano, nano.tokenizer, per_family=1, families=["greeting"], max_new_tokens=6)
    assert report["n"] == 1 and 0 <= report["figures"]["greeting"] <= 100
