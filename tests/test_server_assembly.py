"""The server's token-to-text assembly, fed fixed token streams: reasoning apart from the answer, stop strings
cut across tokens, raw text without its end-of-text token."""
import pytest

from gpt_oss_triton.model import Tokenizer
from gpt_oss_triton.model.server.assembly import ChatAssembler, Delta, StopMatcher, TextAssembler

REPLY = "<|channel|>analysis<|message|>think<|end|><|start|>assistant<|channel|>final<|message|>answer<|return|>"


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.byte_level()


def _run(assembler, ids) -> tuple[list[Delta], Delta]:
    deltas = []
    for token in ids:
        deltas.append(assembler.feed(token))
        if assembler.stopped:
            break
    return deltas, assembler.finish()


def test_chat_reasoning_goes_apart_from_the_answer(tok):
    deltas, last = _run(ChatAssembler(tok), tok.encode(REPLY))
    assert "".join(d.reasoning for d in deltas) == "think"
    assert "".join(d.content for d in deltas) + last.content == "answer"
    assert not any(d.content and d.reasoning for d in deltas)  # each piece belongs to one channel
    assert [d.reasoning for d in deltas if d.reasoning] == list("think")  # streamed token by token


@pytest.mark.parametrize("stop, content", [(["sw"], "an"), (["xyz", "wer"], "ans"), (["answer"], ""),
                                           (["think"], "answer")])  # the reasoning is not searched
def test_chat_stop_strings_cut_the_answer(tok, stop, content):
    assembler = ChatAssembler(tok, stop)
    deltas, last = _run(assembler, tok.encode(REPLY))
    assert "".join(d.content for d in deltas) + last.content == content
    assert assembler.stopped == (content != "answer")


def test_stop_matcher_holds_back_a_possible_start():
    m = StopMatcher(["END"])
    assert m.feed("abcE") == "abc"  # "E" may begin "END"
    assert m.feed("N") == ""
    assert m.feed("x") == "ENx" and not m.stopped  # it did not
    assert m.feed("yEN") == "y"
    assert m.feed("Dz") == "" and m.stopped
    assert m.feed("more") == "" and m.flush() == ""
    assert StopMatcher(["END"]).feed("aE") == "a"
    unfinished = StopMatcher(["END"])
    unfinished.feed("aEN")
    assert unfinished.flush() == "EN"


def test_text_skips_the_end_token_and_keeps_split_characters(tok):
    eot = tok.token_id("<|endoftext|>")
    ids = tok.encode("héllo wörld") + [eot]
    assembler = TextAssembler(tok, end_tokens={eot})
    deltas, last = _run(assembler, ids)
    assert "".join(d.content for d in deltas) + last.content == "héllo wörld"
    assert [d.content for d in deltas[:3]] == ["h", "", "é"]  # "é" is two byte tokens: the first adds nothing yet
    cut = TextAssembler(tok, ["o w"], end_tokens={eot})
    deltas, last = _run(cut, ids)
    assert "".join(d.content for d in deltas) + last.content == "héll" and cut.stopped
