"""Rollouts with the tiny model: the loss's log-prob pass sees exactly the rollout's inputs (method.md
§10.10), micro-batches keep their rows' videos, and the entropy comes from the same forward pass."""

from __future__ import annotations

import math

import pytest
import torch

from vt_grpo.rewards import RewardSet
from vt_grpo.rollout import PromptItem, build_rollout_batch, policy_logprobs, sample_groups, score_groups
from vt_grpo.settings import GRPOSettings

SETTINGS = GRPOSettings(
    prompts_per_step=3, generations_per_prompt=2, micro_batch_per_device=3, max_completion_length=12, beta=0.0
)


@pytest.fixture(scope="module")
def rollout(grpo):
    """3 prompts from the synthetic shards × G=2 completions of the SFT'd tiny model, scored and batched."""
    from vt_data.records import load_records
    from vt_data.video import read_video
    from vt_model.loading import load_model, load_tokenizer
    from vt_model.processing import VideoProcessorConfig, preprocess_video
    from vt_model.prompts import encode_prompt

    torch.manual_seed(0)
    tokenizer, model = load_tokenizer(grpo.sft_dir), load_model(grpo.sft_dir).eval()
    data = grpo.assets / "synthetic"
    processor = VideoProcessorConfig(num_frames=grpo.frames, max_frames=grpo.frames, min_pixels=3136)
    items = []
    for record in load_records(data / "train.jsonl")[:3]:
        clip = read_video(data / record.path, num_frames=grpo.frames)
        prompt = encode_prompt(
            tokenizer, record, preprocess_video(clip.frames, clip.timestamps, processor), grpo.template
        )
        items.append(PromptItem(prompt=prompt, record=record, key=record.key))
    groups = sample_groups(model, tokenizer, items, SETTINGS)
    score_groups(groups, RewardSet())
    batch = build_rollout_batch(groups, tokenizer.pad_token_id, model.config)
    return model, items, groups, batch


def test_loss_pass_reproduces_the_rollout_log_probs(rollout):
    from vt_model.generation import sequence_logprobs

    model, _, _, batch = rollout
    micro = batch.split(SETTINGS.micro_batch_per_device)
    # Rows 0-2 hold prompts 0, 0, 1 and rows 3-5 prompts 1, 2, 2: each micro-batch carries its 2 videos.
    assert len(micro) == 2 and [mb.inputs["video_index"].tolist() for mb in micro] == [[0, 0, 1], [0, 1, 1]]
    assert [int(mb.inputs["video_grid_thw"].shape[0]) for mb in micro] == [2, 2]
    with torch.no_grad():
        for mb in micro:
            mask = mb.completion_mask
            logp = sequence_logprobs(model, mb.inputs, mask)  # [3, L]
            torch.testing.assert_close(logp[mask], mb.rollout_logprobs[mask], atol=1e-4, rtol=0)


def test_the_batch_holds_the_prompts_own_video_tensors(rollout):
    _, items, _, batch = rollout
    inputs = batch.inputs
    assert torch.equal(
        inputs["pixel_values_videos"], torch.cat([it.prompt["pixel_values_videos"] for it in items])
    )
    assert torch.equal(
        inputs["second_per_grid_ts"], torch.cat([it.prompt["second_per_grid_ts"] for it in items])
    )
    assert torch.equal(inputs["video_grid_thw"], torch.cat([it.prompt["video_grid_thw"] for it in items]))
    assert inputs["video_index"].tolist() == [0, 0, 1, 1, 2, 2]
    assert inputs["position_ids"].shape == (3, *inputs["input_ids"].shape)
    # Every row's prompt tokens, video placeholders included, are the prompt's own.
    for row in range(len(batch)):
        prompt = items[row // 2].prompt
        ids = inputs["input_ids"][row][inputs["attention_mask"][row].bool() & ~batch.completion_mask[row]]
        assert torch.equal(ids, prompt["input_ids"])


def test_dropping_the_video_timing_would_be_caught(rollout):
    """The check above is sensitive: positions computed without second_per_grid_ts (Video-R1's flaw)
    change the log-probs well beyond the tolerance."""
    from vt_model.generation import sequence_logprobs
    from vt_model.positions import model_inputs_positions

    model, _, _, batch = rollout
    inputs = dict(batch.inputs)
    rows = inputs["video_index"]
    wrong = {
        "input_ids": inputs["input_ids"],
        "attention_mask": inputs["attention_mask"],
        "video_grid_thw": inputs["video_grid_thw"][rows],
        "second_per_grid_ts": torch.ones_like(inputs["second_per_grid_ts"][rows]),
    }
    inputs["position_ids"] = model_inputs_positions(model.config, wrong)["position_ids"]
    mask = batch.completion_mask
    with torch.no_grad():
        logp = sequence_logprobs(model, inputs, mask)
    assert float((logp[mask] - batch.rollout_logprobs[mask]).abs().max()) > 1e-3


def test_advantages_rewards_and_entropy(rollout):
    model, _, groups, batch = rollout
    assert torch.equal(batch.rewards, torch.cat([g.rewards for g in groups]))
    assert torch.allclose(batch.advantages.view(3, 2).sum(1), torch.zeros(3), atol=1e-5)
    assert batch.truncated.tolist() == [not f for g in groups for f in g.finished]
    mb = batch.rows(0, 2)
    logp, entropy = policy_logprobs(model, mb.inputs, mb.completion_mask, with_entropy=True)
    assert logp.requires_grad and not entropy.requires_grad
    mask = mb.completion_mask
    assert bool((entropy[~mask] == 0).all()) and bool((entropy[mask] >= 0).all())
    assert float(entropy[mask].max()) <= math.log(model.config.text_config.vocab_size) + 1e-4
    # The first completion token's entropy, computed directly from a plain forward pass.
    col = int(mask[0].nonzero()[0])
    inputs = {k: v for k, v in mb.inputs.items() if k != "video_index"}
    # A plain forward takes one video per row: both rows of this micro-batch show the same video.
    inputs.update(
        pixel_values_videos=inputs["pixel_values_videos"].repeat(2, 1),
        video_grid_thw=inputs["video_grid_thw"].repeat(2, 1),
        second_per_grid_ts=inputs["second_per_grid_ts"].repeat(2),
    )
    with torch.no_grad():
        logits = model(**inputs, use_cache=False).logits
    from vt_model.generation import placeholder_ids

    row = logits[0, col - 1].index_fill(-1, torch.tensor(placeholder_ids(model.config)), float("-inf"))
    p = torch.softmax(row, -1)
    expected = -(p[p > 0] * p[p > 0].log()).sum()
    torch.testing.assert_close(entropy[0, col], expected, atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------------- guided spans
def test_guided_spans_are_well_formed_never_degenerate_and_masked_only_when_asked(rollout, grpo):
    """Half of each group starts from a drawn span: the first completion of each group begins with a
    parsable, non-degenerate `<time>` span inside its clip; the loss pass still reproduces the rollout's
    log-probs; `guided_span_in_loss=False` leaves exactly the written tokens out of the mask."""
    from vt_data.timespan import is_degenerate
    from vt_data.trace import parse_trace
    from vt_model.loading import load_tokenizer

    model, items, _, _ = rollout
    tokenizer = load_tokenizer(grpo.sft_dir)
    settings = GRPOSettings(prompts_per_step=3, generations_per_prompt=2, micro_batch_per_device=3,
                            max_completion_length=40, beta=0.0, guided_span_share=0.5)
    assert settings.guided_per_group == 1
    torch.manual_seed(1)
    groups = sample_groups(model, tokenizer, items, settings)
    score_groups(groups, RewardSet())
    for group in groups:
        assert group.forced_lengths[0] > 0 and group.forced_lengths[1] == 0
        written = tokenizer.decode(group.sequences[0][: group.forced_lengths[0]])
        spans = parse_trace(written + " <caption>x</caption> <think>y</think> <answer>A</answer>").spans
        assert len(spans) == 1 and spans[0][1] <= group.item.record.duration
        assert not is_degenerate(spans[0], group.item.record.duration)
        assert group.texts[0].startswith(written)
    trained = build_rollout_batch(groups, tokenizer.pad_token_id, model.config)
    masked = build_rollout_batch(groups, tokenizer.pad_token_id, model.config, train_forced_tokens=False)
    forced = torch.tensor([n for g in groups for n in g.forced_lengths])
    assert torch.equal(trained.completion_mask.sum(1) - masked.completion_mask.sum(1), forced)
    from vt_model.generation import sequence_logprobs

    with torch.no_grad():
        for mb in masked.split(settings.micro_batch_per_device):
            mask = mb.completion_mask
            logp = sequence_logprobs(model, mb.inputs, mask)
            torch.testing.assert_close(logp[mask], mb.rollout_logprobs[mask], atol=1e-4, rtol=0)


def test_drawn_spans_cover_every_allowed_span_and_only_those():
    from vt_data.timespan import is_degenerate
    from vt_grpo.rollout import draw_guided_span

    torch.manual_seed(0)
    drawn = {draw_guided_span(8.0) for _ in range(2000)}
    allowed = {(a, b) for a in range(8) for b in range(a + 1, 9) if not is_degenerate((a, b), 8.0)}
    assert drawn == allowed and (0, 8) not in drawn and (4, 8) in drawn
    quarters = {draw_guided_span(8.0, parts=4) for _ in range(500)}
    assert quarters == {(a, b) for a in (0, 2, 4, 6) for b in (2, 4, 6, 8) if a < b} - {(0, 8)}
    assert draw_guided_span(0.5) is None and draw_guided_span(1.0) is None  # only degenerate spans fit
