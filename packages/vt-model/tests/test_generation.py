"""Rollouts with the video encoded once per prompt: same tokens and log-probs as the naive path (pixels
repeated G times), the vision tower sees each video once, left padding changes nothing, and the
recorded log-probs equal a fresh forward pass over the completions (the GRPO ratio starts at 1)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vt_data.records import VideoQA
from vt_model.generation import encode_videos, generate, rollout_batch, sequence_logprobs, trim_completion
from vt_model.processing import VideoProcessorConfig, preprocess_video
from vt_model.prompts import encode_prompt, special_ids

MAX_NEW = 10


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    """(model, tokenizer, video config) from the session's tiny model directory (conftest.py); a model
    of this module's own, as one test swaps its lm_head for a moment."""
    from vt_model.loading import load_model, load_tokenizer

    config = VideoProcessorConfig.from_pretrained(tiny_dir)
    return load_model(tiny_dir).eval(), load_tokenizer(tiny_dir), config


@pytest.fixture(scope="module")
def prompts(tiny):
    """Two prompts whose videos differ in frame count (4 and 8), so the batch is left-padded."""
    _, tokenizer, config = tiny
    record = VideoQA(problem="What colour is the shape shown first?", path="v.mp4", data_source="synthetic",
                     options=["A. green", "B. blue", "C. red"], solution="<answer>A</answer>", problem_id=1)
    rng = np.random.default_rng(0)
    out = []
    for n in (4, 8):
        frames = rng.integers(0, 256, (n, 56, 56, 3), dtype=np.uint8)
        video = preprocess_video(frames, np.arange(n) * 0.5, config)
        out.append(encode_prompt(tokenizer, record, video, "direct"))
    return out


@pytest.fixture()
def vision_calls(tiny):
    """Every call of the vision tower, as the grid rows (videos) it was given."""
    model = tiny[0]
    calls: list[torch.Tensor] = []

    def record_call(module, args, kwargs, out):
        calls.append(kwargs.get("grid_thw", args[1] if len(args) > 1 else None))  # (videos, 3)

    hook = model.model.visual.register_forward_hook(record_call, with_kwargs=True)
    yield calls
    hook.remove()


def test_encode_once_runs_the_vision_tower_once_per_prompt(tiny, prompts, vision_calls):
    model, tokenizer, _ = tiny
    G = 4
    out = generate(model, tokenizer, prompts[:1], num_return_sequences=G, do_sample=True, max_new_tokens=4)
    assert len(vision_calls) == 1 and vision_calls[0].shape[0] == 1  # one call, one video
    assert len(out.sequences) == 1 and len(out.sequences[0]) == G
    vision_calls.clear()
    generate(model, tokenizer, prompts[:1], num_return_sequences=G, do_sample=True, max_new_tokens=4,
             encode_once=False)
    assert sum(c.shape[0] for c in vision_calls) == G  # the naive path encodes the same video G times


def test_greedy_tokens_and_logprobs_match_the_naive_path(tiny, prompts, vision_calls):
    model, tokenizer, _ = tiny
    kwargs = dict(num_return_sequences=3, do_sample=False, max_new_tokens=MAX_NEW, return_logprobs=True)
    once = generate(model, tokenizer, prompts, **kwargs)
    assert sum(c.shape[0] for c in vision_calls) == 2
    naive = generate(model, tokenizer, prompts, encode_once=False, **kwargs)
    assert sum(c.shape[0] for c in vision_calls) == 2 + 6
    assert once.prompt_lengths == naive.prompt_lengths == [int(p["input_ids"].numel()) for p in prompts]
    for p in range(2):
        for g in range(3):
            assert torch.equal(once.sequences[p][g], naive.sequences[p][g])
            assert once.sequences[p][g].numel() == MAX_NEW and not once.finished[p][g]
            torch.testing.assert_close(once.logprobs[p][g], naive.logprobs[p][g], atol=1e-5, rtol=0)
            assert once.texts[p][g] == naive.texts[p][g]
        # greedy: every completion of a prompt is the same
        assert all(torch.equal(once.sequences[p][0], s) for s in once.sequences[p])


def test_left_padding_does_not_change_a_prompt_s_completion(tiny, prompts):
    model, tokenizer, _ = tiny
    kwargs = dict(num_return_sequences=1, do_sample=False, max_new_tokens=MAX_NEW, return_logprobs=True)
    batched = generate(model, tokenizer, prompts, **kwargs)
    alone = generate(model, tokenizer, prompts[:1], **kwargs)  # prompt 0 is the padded one in the batch
    assert torch.equal(batched.sequences[0][0], alone.sequences[0][0])
    torch.testing.assert_close(batched.logprobs[0][0], alone.logprobs[0][0], atol=1e-4, rtol=0)


def test_rollout_logprobs_equal_a_fresh_forward_pass(tiny, prompts, vision_calls):
    model, tokenizer, _ = tiny
    torch.manual_seed(0)
    out = generate(model, tokenizer, prompts, num_return_sequences=3, do_sample=True, temperature=1.0,
                   top_p=0.9, top_k=50, max_new_tokens=MAX_NEW, return_logprobs=True)
    vision_calls.clear()
    batch, completion_mask = rollout_batch(prompts, out, tokenizer.pad_token_id)
    assert batch["input_ids"].shape[0] == 6 and batch["video_index"].tolist() == [0, 0, 0, 1, 1, 1]
    logprobs = sequence_logprobs(model, batch, completion_mask)  # (6, L)
    assert len(vision_calls) == 1 and vision_calls[0].shape[0] == 2  # each unique video once
    rows = [lp for per_prompt in out.logprobs for lp in per_prompt]
    for i, expected in enumerate(rows):
        torch.testing.assert_close(logprobs[i][completion_mask[i].bool()], expected, atol=1e-4, rtol=0)
    assert (logprobs[completion_mask == 0] == 0).all()
    # precomputed features skip the vision tower and give the same numbers
    vision_calls.clear()
    features = encode_videos(model, batch["pixel_values_videos"], batch["video_grid_thw"])
    again = sequence_logprobs(model, batch, completion_mask, video_features=features)
    assert len(vision_calls) == 1
    torch.testing.assert_close(again, logprobs)


def test_sequence_logprobs_carries_gradients(tiny, prompts):
    model, tokenizer, _ = tiny
    out = generate(model, tokenizer, prompts[:1], num_return_sequences=2, do_sample=True, max_new_tokens=4)
    batch, completion_mask = rollout_batch(prompts[:1], out, tokenizer.pad_token_id)
    logprobs = sequence_logprobs(model, batch, completion_mask, temperature=0.7)
    logprobs.sum().backward()
    assert model.lm_head.weight.grad is not None and model.model.visual.merger.mlp[0].weight.grad is not None
    model.zero_grad(set_to_none=True)


def test_trim_completion_cuts_after_the_first_stop(tiny):
    _, tokenizer, _ = tiny
    ids = special_ids(tokenizer)
    tokens = torch.tensor([5, 6, ids.im_end, ids.pad, ids.pad])
    seq, done = trim_completion(tokens, (ids.im_end, ids.pad))
    assert seq.tolist() == [5, 6, ids.im_end] and done
    seq, done = trim_completion(torch.tensor([5, 6, 7]), (ids.im_end, ids.pad))
    assert seq.tolist() == [5, 6, 7] and not done


def test_generation_stops_at_im_end_and_never_emits_placeholders(tiny, prompts):
    model, tokenizer, _ = tiny
    ids = special_ids(tokenizer)
    # a head whose only non-zero outputs are biases: <|video_pad|> highest, then <|im_end|>. Placeholders
    # are suppressed, so greedy emits <|im_end|> at once and must stop there.
    original = model.lm_head
    head = torch.nn.Linear(original.in_features, original.out_features, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[ids.im_end] = 20.0
        head.bias[ids.video_pad] = 30.0
        head.bias[ids.vision_start] = 30.0
    model.lm_head = head
    try:
        out = generate(model, tokenizer, prompts, num_return_sequences=2, do_sample=False, max_new_tokens=5,
                       return_logprobs=True)
    finally:
        model.lm_head = original
    for p in range(2):
        for g in range(2):
            assert out.sequences[p][g].tolist() == [ids.im_end] and out.finished[p][g]
            assert out.texts[p][g] == "" and out.logprobs[p][g].shape == (1,)
            assert out.logprobs[p][g].item() > -1e-3  # probability ~1 once the placeholders are excluded


@pytest.fixture()
def prefill_rows(tiny):
    """Rows of every language-model call that processes more than one position (a prefill)."""
    model = tiny[0]
    rows: list[int] = []

    def record_call(module, args, kwargs, out):
        embeds = kwargs.get("inputs_embeds")
        if embeds is not None and embeds.shape[1] > 1:
            rows.append(int(embeds.shape[0]))

    hook = model.model.language_model.register_forward_hook(record_call, with_kwargs=True)
    yield rows
    hook.remove()


def test_shared_prefill_runs_the_language_model_once_per_prompt(tiny, prompts, prefill_rows):
    model, tokenizer, _ = tiny
    G = 4
    generate(model, tokenizer, prompts, num_return_sequences=G, do_sample=True, max_new_tokens=4)
    assert prefill_rows == [2]  # B rows, one call
    prefill_rows.clear()
    generate(model, tokenizer, prompts, num_return_sequences=G, do_sample=True, max_new_tokens=4,
             prefill="per_completion")
    assert prefill_rows == [2 * G]  # transformers' generate prefills every completion


@pytest.mark.parametrize("G", [1, 3])
def test_shared_prefill_equals_transformers_generate(tiny, prompts, G):
    """Greedy tokens identical and log-probs equal within float tolerance, left-padded batch, G = 1 and 3."""
    model, tokenizer, _ = tiny
    kwargs = dict(num_return_sequences=G, do_sample=False, max_new_tokens=MAX_NEW, return_logprobs=True)
    shared = generate(model, tokenizer, prompts, **kwargs)
    reference = generate(model, tokenizer, prompts, prefill="per_completion", **kwargs)
    assert shared.prompt_lengths == reference.prompt_lengths
    for p in range(2):
        for g in range(G):
            assert torch.equal(shared.sequences[p][g], reference.sequences[p][g])
            assert shared.texts[p][g] == reference.texts[p][g]
            assert shared.finished[p][g] == reference.finished[p][g]
            torch.testing.assert_close(shared.logprobs[p][g], reference.logprobs[p][g], atol=1e-5, rtol=0)


def test_shared_prefill_text_only_prompt_equals_transformers_generate(tiny):
    """The hindsight checker's prompts carry no video: the shared path handles them too."""
    model, tokenizer, _ = tiny
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Which colour is first?"}],
                                         tokenize=False, add_generation_prompt=True)
    ids = torch.tensor(tokenizer(text)["input_ids"])
    prompt = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
              "mm_token_type_ids": torch.zeros_like(ids)}
    kwargs = dict(num_return_sequences=2, do_sample=False, max_new_tokens=MAX_NEW, return_logprobs=True)
    shared = generate(model, tokenizer, [prompt], **kwargs)
    reference = generate(model, tokenizer, [prompt], prefill="per_completion", **kwargs)
    for g in range(2):
        assert torch.equal(shared.sequences[0][g], reference.sequences[0][g])
        torch.testing.assert_close(shared.logprobs[0][g], reference.logprobs[0][g], atol=1e-5, rtol=0)


@pytest.mark.parametrize(("temperature", "top_k", "top_p"), [(1.0, 0, 1.0), (0.7, 5, 1.0), (1.3, 0, 0.8),
                                                             (0.9, 40, 0.9), (1.0, 1, 0.5)])
def test_sampling_filter_matches_transformers_warpers(temperature, top_k, top_p):
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    from vt_model.generation import _filter_logits

    logits = torch.randn(6, 97, generator=torch.Generator().manual_seed(1)) * 3
    expected = logits.clone()
    if temperature != 1.0:
        expected = TemperatureLogitsWarper(temperature)(None, expected)
    if top_k:
        expected = TopKLogitsWarper(top_k)(None, expected)
    if top_p < 1.0:
        expected = TopPLogitsWarper(top_p)(None, expected)
    ours = _filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    assert torch.equal(torch.isinf(ours), torch.isinf(expected))
    torch.testing.assert_close(ours.softmax(-1), expected.softmax(-1))


def test_shared_prefill_samples_follow_the_filtered_distribution(tiny, prompts):
    """top_k=1 sampling is greedy: any other token would mean the filter was not applied."""
    model, tokenizer, _ = tiny
    greedy = generate(model, tokenizer, prompts, num_return_sequences=1, do_sample=False, max_new_tokens=6)
    sampled = generate(model, tokenizer, prompts, num_return_sequences=3, do_sample=True, temperature=1.5,
                       top_k=1, max_new_tokens=6)
    for p in range(2):
        assert all(torch.equal(s, greedy.sequences[p][0]) for s in sampled.sequences[p])


def test_prefill_argument_is_checked(tiny, prompts):
    model, tokenizer, _ = tiny
    with pytest.raises(ValueError, match="prefill must be"):
        generate(model, tokenizer, prompts, prefill="twice")
