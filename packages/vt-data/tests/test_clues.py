"""Clue sufficiency (vt_data.clues): what the checker is given (only question, options and the trace's own
<time>/<caption> pairs), the rule-based checker (abstains on a caption that names no option), a chat model
as checker, and verdicts: a caption that contradicts the answer is insufficient."""

from __future__ import annotations

import json

import pytest

from vt_data.clues import ChatChecker, RuleChecker, build_checker, clue_evidence, clue_request, judge_clues
from vt_data.curate.models import ChatReply
from vt_data.curate.prompts import PromptTemplate
from vt_data.curate.rules import rule_based_checker
from vt_data.records import Segment, VideoQA

LAST = VideoQA(
    problem="What colour is the last shape shown?", path="v.mp4", data_source="synthetic",
    options=["A. red", "B. green", "C. blue", "D. yellow"], solution="<answer>C</answer>", duration=8.0,
    segments=[Segment(4.0, 8.0, "a blue circle")],
)
PROMPT = PromptTemplate(user="{payload}\nReply with {\"answer\": \"<letter>\"}.", system="Use the notes.")


def trace(caption: str, answer: str, span: str = "00:04-00:08") -> str:
    return (f"Let me look. <time>{span}</time> <caption>{caption}</caption> "
            f"<think> the last is blue, blue is C</think> So the answer is {answer}."
            f"\n<answer>{answer}</answer>")


def test_the_checker_sees_only_question_options_and_the_time_caption_pairs():
    text = ("Free text naming C. <time>00:00-00:04</time> <caption> a red  square</caption> <think>C!</think>"
            " <time>00:04-00:08</time><caption>a blue circle</caption> and no think; <time>9</time>"
            " <caption></caption> <answer>C</answer>")
    assert clue_evidence(text) == (("00:00-00:04", "a red square"), ("00:04-00:08", "a blue circle"))
    request = clue_request(text, LAST)
    assert request.question == LAST.problem and request.options == tuple(LAST.options)
    assert request.video_path is None  # never the video
    flat = json.dumps(request.to_dict())
    assert "think" not in flat and "C!" not in flat and "answer" not in flat.replace('"answer"', "")
    assert clue_request("<answer>C</answer>", LAST) is None and clue_evidence(None) == ()


def test_a_caption_that_contradicts_the_answer_is_not_sufficient():
    checker = RuleChecker()
    faithful = judge_clues(checker, trace("a blue circle", "C"), LAST)
    assert (faithful.answer, faithful.sufficient, faithful.agrees) == ("C", True, True)
    contradicting = judge_clues(checker, trace("a red square", "C"), LAST)  # right answer, wrong evidence
    assert contradicting.answer == "A" and not contradicting.sufficient and not contradicting.agrees
    lucky = judge_clues(checker, trace("a blue circle", "B"), LAST)  # wrong answer, right evidence
    assert lucky.sufficient and not lucky.agrees
    bare = judge_clues(checker, "<answer>C</answer>", LAST)  # no clues: insufficient, nobody asked
    assert bare.answer is None and not bare.sufficient and bare.clues == ()


def test_the_rule_checker_reads_the_last_caption_and_never_defaults_to_a():
    checker = RuleChecker()
    two = ("<time>00:00-00:04</time> <caption>a red square</caption> <think>a</think> "
           "<time>00:04-00:08</time> <caption>a blue circle</caption> <think>b</think> <answer>C</answer>")
    assert judge_clues(checker, two, LAST).answer == "C"
    a_gold = LAST.replace(solution="<answer>A</answer>")
    nothing = judge_clues(checker, trace("a shape moves", "A"), a_gold)
    assert nothing.answer is None and not nothing.sufficient  # no option word: abstain, not "A"


def test_a_chat_model_checks_through_the_hindsight_prompt():
    checker = ChatChecker(rule_based_checker(), PROMPT)  # the curation's rule-based ChatModel
    assert checker.name == "chat:rule-based-checker"
    assert judge_clues(checker, trace("a blue circle", "C"), LAST).answer == "C"

    class Garbled:
        name, concurrency = "garbled", 1

        def complete(self, messages, *, temperature, max_tokens):
            assert [m["role"] for m in messages] == ["system", "user"]
            assert "a blue circle" in messages[1]["content"]
            return ChatReply("I cannot tell.")

    garbled = ChatChecker(Garbled(), {"user": "{payload}", "system": "Notes only."})
    assert judge_clues(garbled, trace("a blue circle", "C"), LAST).answer is None


def test_build_checker_accepts_names_and_objects():
    assert build_checker(None) is None and isinstance(build_checker("rule_based"), RuleChecker)
    checker = RuleChecker()
    assert build_checker(checker) is checker
    with pytest.raises(ValueError, match="unknown clue checker"):
        build_checker("oracle")
    with pytest.raises(TypeError, match="check"):
        build_checker(object())
