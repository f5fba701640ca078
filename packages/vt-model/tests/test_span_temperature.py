"""generate(span_temperature=...): the tokens inside <time>…</time> are sampled at their own temperature
(exploration of spans for GRPO), found on the decoded text however the tags split into tokens; the
default path is unchanged, and a span temperature equal to the temperature samples exactly the same."""

from __future__ import annotations

import pytest
import torch

import vt_model.generation as generation
from vt_model.generation import _SpanTracker, generate

TRACES = (
    "Let me look. <time>00:04-00:08</time> <caption>a red circle</caption> <think> last is red</think>"
    "\n<time>1-2</time><caption>x</caption><answer>A</answer>",
    "<time>00:00-00:08</time>\n<caption>a blue square</caption> <TIME>3 to 5</Time> done",
)


@pytest.fixture(scope="module")
def tiny(tiny_model, tiny_tokenizer):
    """(model, tokenizer) of the session's tiny model (conftest.py)."""
    return tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def prompt(last_colour_prompt):
    return last_colour_prompt


def _open_after_each_token(tokenizer, ids: list[int]) -> list[bool]:
    """Whether the decoded text up to and including each token has an unclosed <time> (any case)."""
    states = []
    for i in range(len(ids)):
        text = tokenizer.decode(ids[: i + 1]).lower()
        states.append(text.rfind("<time>") > text.rfind("</time>"))
    return states


def test_the_tracker_follows_the_decoded_text_whatever_the_token_split(tiny):
    _, tokenizer = tiny
    rows = [tokenizer(t)["input_ids"] for t in TRACES]
    width = max(map(len, rows))
    pad = tokenizer.pad_token_id
    tracker = _SpanTracker(tokenizer, len(rows), temperature=1.0, span_temperature=3.0, device="cpu")
    seen: list[list[bool]] = [[] for _ in rows]
    for step in range(width):
        tokens = torch.tensor([r[step] if step < len(r) else pad for r in rows])
        tracker.update(tokens)
        temps = tracker.temperatures()
        assert temps.shape == (len(rows), 1)
        for i in range(len(rows)):
            seen[i].append(bool(tracker.inside[i]))
            assert temps[i, 0] == (3.0 if tracker.inside[i] else 1.0)
    for i, ids in enumerate(rows):
        expected = _open_after_each_token(tokenizer, ids)
        assert seen[i][: len(ids)] == expected and any(expected) and not all(expected)


def test_the_decode_loop_samples_span_tokens_at_the_span_temperature(tiny, prompt, monkeypatch):
    """The chosen tokens are scripted (a trace); the model runs on them for real and the temperature each
    step was sampled at is recorded: the span temperature exactly while a <time> is open."""
    model, tokenizer = tiny
    script = tokenizer(TRACES[0])["input_ids"] + [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    temperatures: list[torch.Tensor] = []

    def scripted(logits, *, do_sample, temperature, top_k, top_p):
        temperatures.append(temperature)
        return torch.full((logits.shape[0],), script[len(temperatures) - 1], dtype=torch.long)

    monkeypatch.setattr(generation, "_next_tokens", scripted)
    out = generate(model, tokenizer, [prompt], num_return_sequences=2, temperature=0.7, span_temperature=2.5,
                   max_new_tokens=len(script) + 5)
    assert out.texts[0] == [TRACES[0]] * 2 and len(temperatures) == len(script)
    inside = [False] + _open_after_each_token(tokenizer, script[:-1])  # the state before each step
    for step, temp in enumerate(temperatures):
        assert temp.shape == (2, 1)
        assert temp.flatten().tolist() == [pytest.approx(2.5 if inside[step] else 0.7)] * 2


def test_default_path_is_unchanged_and_an_equal_span_temperature_samples_the_same(tiny, prompt, monkeypatch):
    model, tokenizer = tiny
    kwargs = dict(num_return_sequences=4, do_sample=True, temperature=1.3, top_k=50, top_p=0.9,
                  max_new_tokens=12, return_logprobs=True)
    torch.manual_seed(3)
    plain = generate(model, tokenizer, [prompt], **kwargs)
    torch.manual_seed(3)
    equal = generate(model, tokenizer, [prompt], span_temperature=1.3, **kwargs)
    for a, b in zip(plain.sequences[0], equal.sequences[0], strict=True):
        assert torch.equal(a, b)
    for a, b in zip(plain.logprobs[0], equal.logprobs[0], strict=True):
        assert torch.equal(a, b)  # recorded log-probs are the raw logits' either way

    made = []
    monkeypatch.setattr(generation, "_SpanTracker", lambda *a, **k: made.append(a) or _SpanTracker(*a, **k))
    generate(model, tokenizer, [prompt], **kwargs)
    assert made == []  # no tracker, no per-row temperatures: the default path as it was


def test_span_temperature_needs_sampling_on_the_shared_prefill_path(tiny, prompt):
    model, tokenizer = tiny
    for kwargs in ({"do_sample": False}, {"prefill": "per_completion"}, {"encode_once": False},
                   {"span_temperature": 0.0}):
        with pytest.raises(ValueError, match="span_temperature"):
            generate(model, tokenizer, [prompt], max_new_tokens=2, **{"span_temperature": 2.0, **kwargs})
