"""Rewards: known values, the registry and user hook, weights that move advantages, and totality
over arbitrary and adversarial strings."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vt_data.records import Segment, VideoQA
from vt_data.scoring import score_answer
from vt_grpo.advantages import group_advantages
from vt_grpo.rewards import REGISTRY, RewardSet, load_reward, register_reward

SAMPLE = VideoQA(
    problem="What colour is the shape shown from 00:02 to 00:04?", path="v.mp4", data_source="test",
    options=["A. red", "B. green", "C. blue", "D. yellow"], solution="<answer>B</answer>",
    duration=8.0, segments=[Segment(2.0, 4.0, "a green square"), Segment(6.0, 8.0, "a red circle")],
)
NUMERIC = VideoQA(problem="How many?", path="v.mp4", data_source="test", problem_type="numerical",
                  solution="<answer>3</answer>", duration=8.0)


def trace(*spans: str, answer: str = "B") -> str:
    steps = " ".join(f"<time>{s}</time> <caption>a shape</caption> <think>so {answer}</think>" for s in spans)
    return f"{steps}\n<answer>{answer}</answer>"


GOOD = trace("00:02-00:04", "00:06-00:08")
NESTED = "<time>00:02-00:04</time> <caption>a <think>x</think></caption> <think>y</think><answer>B</answer>"


def run(name: str, completions: list[str], sample: VideoQA = SAMPLE, **options) -> list[float]:
    return REGISTRY[name](completions, [sample] * len(completions), **options)


# --- format ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("completion", "score"),
    [
        (GOOD, 1.0),
        (GOOD + "\n<answer>B</answer>", 0.0),  # repeated answer tag
        (NESTED, 0.0),
        (trace("00:02-00:04") + " extra", 0.0),  # text after the answer
        (trace("00:06-00:12"), 0.0),  # ends after the 8-s video
        (trace("00:04-00:04"), 0.0),  # zero length
        (trace("00:02-00:04", answer="(B)"), 0.0),  # not one capital letter
        ("<answer>B</answer>", 0.0),  # no triple
        ("<time>00:02-00:04</time> <caption>a</caption> <think>b</think><answer>B", 0.0),  # unclosed
    ],
)
def test_format_reward(completion, score):
    assert run("format", [completion]) == [score]


def test_format_reward_length_limit_and_answer_kind():
    assert run("format", [GOOD], max_chars=len(GOOD) - 1) == [0.0]
    assert run("format", [GOOD], max_chars=len(GOOD)) == [1.0]
    assert run("format", [trace("00:02-00:04", answer="3")], NUMERIC) == [1.0]  # "any" for non-MC
    assert run("format", [trace("00:02-00:04", answer="3")]) == [0.0]  # a letter for MC


# --- accuracy -----------------------------------------------------------------------------------
def test_accuracy_reward_is_the_evaluator_scorer():
    completions = [GOOD, trace("00:02-00:04", answer="C"), trace("00:02-00:04", answer="(B)"), "B", ""]
    expected = [score_answer(c, SAMPLE) for c in completions]
    assert run("accuracy", completions) == expected == [1.0, 0.0, 0.0, 1.0, 0.0]
    assert run("accuracy", [trace("00:02-00:04", answer="3")], NUMERIC) == [1.0]


# --- temporal IoU -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("completion", "score"),
    [
        (GOOD, 1.0),
        (trace("00:02-00:04"), 0.5),  # matches one of two gold segments
        (trace("00:03-00:05"), (1 / 3) / 2),  # IoU 1/3 with the first, 0 with the second
        (trace("00:00-00:08"), 0.0),  # the whole video earns nothing
        (trace("00:00-00:07.2"), 0.0),  # 90 % of the video: degenerate
        (trace("00:00-00:07"), (2 / 7 + 1 / 8) / 2),  # 87.5 %: still counts
        (trace("00:02-00:04") + "<answer>B</answer>", 0.0),  # invalid format
        (trace(*["00:02-00:04"] * 9), 0.0),  # more than 8 spans
    ],
)
def test_temporal_iou_reward(completion, score):
    assert run("temporal_iou", [completion]) == [pytest.approx(score)]


def test_temporal_iou_needs_segments_and_a_duration():
    assert run("temporal_iou", [GOOD], SAMPLE.replace(segments=None)) == [0.0]
    assert run("temporal_iou", [GOOD], SAMPLE.replace(duration=None)) == [0.0]


# --- clue sufficiency ---------------------------------------------------------------------------
def clue_trace(*captions: str, answer: str = "B", span: str = "00:02-00:04") -> str:
    steps = " ".join(f"<time>{span}</time> <caption>{c}</caption> <think>so {answer}</think>"
                     for c in captions)
    return f"{steps}\n<answer>{answer}</answer>"


@pytest.mark.parametrize(
    ("completion", "options", "score"),
    [
        (clue_trace("a green square"), {}, 1.0),  # the clue names the gold colour
        (clue_trace("a red circle"), {}, 0.0),  # right answer, contradicting clue
        (clue_trace("a green square", answer="C"), {}, 1.0),  # wrong answer, the clue still suffices
        (clue_trace("a shape"), {}, 0.0),  # the clue names no option: the checker abstains
        (clue_trace("a red circle", "a green square"), {}, 1.0),  # the rule checker reads the last clue
        (clue_trace("a green square") + "<answer>B</answer>", {}, 0.0),  # invalid format
        ("<answer>B</answer>", {}, 0.0),  # no clue at all
        (clue_trace(*["a green square"] * 9), {}, 0.0),  # more than 8 clues
        (clue_trace("a green square", span="00:00-00:08"), {}, 1.0),
        (clue_trace("a green square", span="00:00-00:08"), {"grounded": True}, 0.0),  # whole clip
        (clue_trace("a green square"), {"grounded": True}, 1.0),
    ],
)
def test_clue_reward(completion, options, score):
    assert run("clue", [completion], **options) == [score]


def test_clue_reward_asks_each_clue_set_once_and_a_failing_checker_scores_zero(caplog):
    from vt_data.clues import RuleChecker

    class Counting(RuleChecker):
        calls = 0

        def check(self, request):
            Counting.calls += 1
            if "boom" in request.evidence[-1][1]:
                raise ConnectionError("checker down")
            return super().check(request)

    group = [clue_trace("a green square")] * 6 + [clue_trace("a boom green square")] * 2
    assert run("clue", group, checker=Counting()) == [1.0] * 6 + [0.0] * 2
    assert Counting.calls == 2 and "failed on 1 of 2" in caplog.text
    assert run("clue", [clue_trace("a green square")], NUMERIC) == [0.0]  # multiple choice only
    with pytest.raises(ValueError, match="needs a checker"):
        run("clue", [GOOD], checker=None)


# --- registry, user hook, RewardSet -------------------------------------------------------------
def test_load_reward_by_name_and_by_import_path(tmp_path, monkeypatch):
    assert load_reward("format").name == "format"
    (tmp_path / "my_vt_rewards.py").write_text(
        "from vt_grpo.rewards import register_reward\n"
        "@register_reward('test_brevity', 0.0, 1.0)\n"
        "def brevity(completions, samples):\n"
        "    return [1.0 if len(c) < 200 else 0.0 for c in completions]\n"
        "def unbounded(completions, samples):\n"
        "    return [float(len(c)) for c in completions]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    brevity = load_reward("my_vt_rewards:brevity")
    assert (brevity.low, brevity.high) == (0.0, 1.0)
    unbounded = load_reward("my_vt_rewards:unbounded")
    assert unbounded.high == float("inf")
    scores = RewardSet({"accuracy": 1.0, "my_vt_rewards:brevity": 0.5})([GOOD, "x" * 300], [SAMPLE] * 2)
    assert scores.names == ("accuracy", "my_vt_rewards:brevity")
    torch.testing.assert_close(scores.per_function, torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
    torch.testing.assert_close(scores.total, torch.tensor([1.5, 0.0]))
    with pytest.raises(KeyError):
        load_reward("no_such_reward")


def test_reward_set_checks_declared_ranges_and_lengths():
    @register_reward("test_out_of_range", 0.0, 1.0)
    def out_of_range(completions, samples):
        return [2.0 for _ in completions]

    @register_reward("test_short", 0.0, 1.0)
    def short(completions, samples):
        return []

    with pytest.raises(ValueError, match="test_out_of_range"):
        RewardSet({"test_out_of_range": 1.0})([GOOD], [SAMPLE])
    with pytest.raises(ValueError, match="test_short"):
        RewardSet({"test_short": 1.0})([GOOD], [SAMPLE])
    with pytest.raises(ValueError, match="already registered"):
        register_reward("format", 0.0, 1.0)(short)
    with pytest.raises(ValueError, match="not in the set"):
        RewardSet({"accuracy": 1.0}, options={"format": {"max_chars": 10}})


def test_reward_set_defaults_to_the_papers_sum_and_passes_options():
    scores = RewardSet()([GOOD, trace("00:02-00:04", answer="C")], [SAMPLE] * 2)
    assert scores.names == ("accuracy", "format")
    torch.testing.assert_close(scores.total, torch.tensor([2.0, 1.0]))
    limited = RewardSet({"format": 1.0}, options={"format": {"max_chars": 10}})([GOOD], [SAMPLE])
    assert limited.total.tolist() == [0.0]


# --- weights move advantages; a constant-per-group bonus does not (Video-R1 #51) -----------------
def moves_advantages(base: torch.Tensor, term: torch.Tensor, group_size: int) -> bool:
    """Whether adding a shaping term to the rewards changes the normalised advantages."""
    return not torch.allclose(group_advantages(base, group_size), group_advantages(base + term, group_size))


def test_changing_a_rewards_weight_changes_the_normalised_advantages():
    # One group: right and formatted, wrong and formatted, right but unformatted, wrong and unformatted.
    group = [GOOD, trace("00:02-00:04", answer="C"), "<answer>B</answer>", "<answer>C</answer>"]
    half = RewardSet({"accuracy": 1.0, "format": 0.5})(group, [SAMPLE] * 4)
    full = RewardSet({"accuracy": 1.0, "format": 1.0})(group, [SAMPLE] * 4)
    assert half.per_function[:, 1].tolist() == [1.0, 1.0, 0.0, 0.0]  # format differs in the group
    assert not torch.allclose(group_advantages(half.total, 4), group_advantages(full.total, 4))
    assert moves_advantages(half.total, 0.5 * half.per_function[:, 1], 4)


def test_a_constant_per_group_bonus_cancels_after_normalisation():
    # Video-R1's temporal bonus was the same for every completion of a group; group normalisation
    # subtracts it again, so the bonus teaches nothing. The shaping test above would flag it.
    base = RewardSet()(
        [GOOD, trace("00:02-00:04", answer="C"), "<answer>B</answer>", "<answer>C</answer>"] * 2,
        [SAMPLE] * 8,
    ).total  # [2 groups × 4]
    bonus = torch.tensor([0.3] * 4 + [0.0] * 4)  # one group got the bonus, on every completion
    assert not moves_advantages(base, bonus, 4)
    torch.testing.assert_close(group_advantages(base, 4), group_advantages(base + bonus, 4))


# --- totality: never raise, stay in range -------------------------------------------------------
SAMPLES = [SAMPLE, NUMERIC, SAMPLE.replace(duration=None), SAMPLE.replace(segments=None)]
_PIECES = st.sampled_from([
    "<time>", "</time>", "<caption>", "</caption>", "<think>", "</think>", "<answer>", "</answer>",
    "<ANSWER>", "<Time>", "00:02-00:04", "00:00-00:08", "-00:05", "99999999999999:00-999999999999999:30",
    "1e400", "00:75-01:00", "B", "(B)", "3", " ", "\n", "a shape", "é", "\u202e", "🙂", "\x00",
])
COMPLETIONS = st.one_of(st.text(max_size=300), st.lists(_PIECES, max_size=40).map("".join))


@settings(deadline=None, max_examples=150)
@given(st.lists(COMPLETIONS, min_size=1, max_size=4), st.sampled_from(SAMPLES))
def test_builtin_rewards_never_raise_and_stay_in_range(completions, sample):
    reward_set = RewardSet({"accuracy": 1.0, "format": 1.0, "temporal_iou": 1.0})
    scores = reward_set(completions, [sample] * len(completions))  # RewardSet checks the ranges
    assert scores.per_function.shape == (len(completions), 3)
    assert ((scores.per_function >= 0) & (scores.per_function <= 1)).all()


@settings(deadline=None, max_examples=150)
@given(st.lists(COMPLETIONS, min_size=1, max_size=4), st.sampled_from(SAMPLES), st.booleans())
def test_clue_reward_never_raises_and_stays_in_range(completions, sample, grounded):
    reward_set = RewardSet({"clue": 1.0}, options={"clue": {"grounded": grounded}})
    scores = reward_set(completions, [sample] * len(completions))  # RewardSet checks the range
    assert scores.per_function.shape == (len(completions), 1)


@settings(deadline=None, max_examples=150)
@given(st.lists(st.text(max_size=80), min_size=1, max_size=3),
       st.lists(st.text(max_size=20), min_size=0, max_size=6), st.sampled_from(["A", "B", "Z", ""]))
def test_clue_reward_with_arbitrary_captions_and_options_stays_in_range(captions, options, gold):
    # Valid traces whose captions and options are anything: the checker itself runs on every one.
    sample = SAMPLE.replace(options=[f"{chr(65 + i)}. {o}" for i, o in enumerate(options)] or None,
                            solution=f"<answer>{gold}</answer>")
    assert all(x in (0.0, 1.0) for x in run("clue", [clue_trace(*captions)], sample))


ADVERSARIAL = [
    "<answer>B</answer>" * 5000,  # repeated answer tags, 90k characters
    "<time>" * 20000,  # unclosed tags
    "</think>" * 12000,
    trace("99999999999999999999:00-999999999999999999999:00"),  # huge times
    trace("-00:05-00:04"),  # negative time
    trace("1e309-1e310"),
    "x" * 100_000,
    "é🙂\u202e" * 33_334,  # 100k unicode characters
    GOOD + " " * 100_000,
    ("<time>00:02-00:04</time> <caption>" + "a " * 50_000 + "</caption> <think>b</think><answer>B</answer>"),
]


@pytest.mark.parametrize("completion", ADVERSARIAL, ids=range(len(ADVERSARIAL)))
def test_adversarial_strings(completion):
    reward_set = RewardSet({"accuracy": 1.0, "format": 1.0, "temporal_iou": 1.0})
    scores = reward_set([completion] * 2, [SAMPLE, NUMERIC])
    assert ((scores.per_function >= 0) & (scores.per_function <= 1)).all()
    assert scores.per_function[:, 1].tolist() == [0.0, 0.0]  # none of them is a valid trace
    assert REGISTRY["clue"]([completion] * 2, [SAMPLE, NUMERIC]) == [0.0, 0.0]
