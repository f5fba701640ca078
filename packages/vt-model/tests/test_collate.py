"""SFT encoding and collation (method.md §10.1, §10.2; stack.md §3): the loss sees only the assistant
response, no vision or pad token carries a label, mixed frame counts batch, the token budget fails
loudly or reduces frames, and every batch carries mm_token_type_ids, second_per_grid_ts and the
original-rule position ids."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vt_data.records import VideoQA
from vt_data.video import VideoClip
from vt_model.collate import (
    IGNORE_INDEX,
    TokenBudget,
    TokenBudgetError,
    check_position_config,
    collate_prompts,
    collate_sft,
    encode_sft_example,
    model_inputs,
    subsample_frames,
)
from vt_model.positions import model_inputs_positions
from vt_model.processing import VideoProcessorConfig, preprocess_video
from vt_model.prompts import build_messages, encode_prompt, special_ids


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    """(model, tokenizer, video config) from the session's tiny model directory (conftest.py)."""
    from vt_model.loading import load_model, load_tokenizer

    model = load_model(tiny_dir).eval()
    return model, load_tokenizer(tiny_dir), VideoProcessorConfig.from_pretrained(tiny_dir)


@pytest.fixture()
def record() -> VideoQA:
    return VideoQA(
        problem="What colour is the shape shown right after the red square?",
        path="videos/clip_0003.mp4",
        data_source="synthetic",
        options=["A. green", "B. blue", "C. red", "D. white"],
        process="Let me look. <time>00:02-00:04</time> <caption>a green circle</caption> "
        "<think>Hmm, green comes right after.</think> So the answer is A.",
        solution="<answer>A</answer>",
        problem_id=3,
    )


def frames(num: int, seed: int = 0, size: int = 56) -> tuple[np.ndarray, np.ndarray]:
    """num random uint8 (num, size, size, 3) frames, 0.5 s apart; 56 px stays 56 px (4 tokens / step)."""
    rng = np.random.default_rng(seed + num)
    return rng.integers(0, 256, (num, size, size, 3), dtype=np.uint8), np.arange(num) * 0.5


def sft(tokenizer, record, num_frames, config, **kwargs):
    video, ts = frames(num_frames)
    return encode_sft_example(tokenizer, record, video, config, timestamps=ts, **kwargs)


def prompt(tokenizer, record, num_frames, config):
    return encode_prompt(tokenizer, record, preprocess_video(*frames(num_frames), config))


def test_labels_cover_exactly_the_assistant_response(tiny, record):
    _, tokenizer, config = tiny
    video, ts = frames(4)
    ex = encode_sft_example(tokenizer, record, video, config, timestamps=ts)
    labelled = (ex["labels"] != IGNORE_INDEX).nonzero().flatten()
    n_prompt = ex["num_prompt_tokens"]
    assert torch.equal(labelled, torch.arange(n_prompt, ex["input_ids"].numel()))
    assert torch.equal(ex["labels"][labelled], ex["input_ids"][labelled])
    assert tokenizer.decode(ex["input_ids"][labelled]) == record.target + "<|im_end|>"
    # the prompt part is the very prompt rollouts and evaluation use
    prompt = encode_prompt(tokenizer, record, preprocess_video(video, ts, config))
    assert torch.equal(ex["input_ids"][:n_prompt], prompt["input_ids"])
    # and prompt + target is the chat template's rendering of the whole conversation
    conversation = [*build_messages(record), {"role": "assistant", "content": record.target}]
    full = tokenizer.apply_chat_template(conversation, tokenize=False)
    assert full == prompt["prompt_text"] + record.target + "<|im_end|>\n"


def test_no_vision_or_pad_token_carries_a_label(tiny, record):
    _, tokenizer, config = tiny
    ids = special_ids(tokenizer)
    batch = collate_sft([sft(tokenizer, record, n, config) for n in (4, 8)], tokenizer.pad_token_id)
    labelled = batch["labels"] != IGNORE_INDEX
    forbidden = torch.isin(batch["input_ids"], torch.tensor([*ids.vision, ids.pad, ids.im_start]))
    assert not (labelled & forbidden).any()
    assert not (labelled & (batch["attention_mask"] == 0)).any()  # padding excluded
    assert not (labelled & (batch["mm_token_type_ids"] != 0)).any()
    assert (batch["attention_mask"] == 0).any()  # the shorter sample really was padded


def test_a_target_holding_special_token_strings_still_masks_them(tiny, record):
    _, tokenizer, config = tiny
    ids = special_ids(tokenizer)
    odd = record.replace(process="see <|vision_end|> and <|endoftext|> here")
    ex = sft(tokenizer, odd, 2, config)
    tail = ex["num_prompt_tokens"]
    vision_end = (ex["input_ids"][tail:] == ids.vision_end).nonzero().flatten() + tail
    assert vision_end.numel() == 1 and ex["labels"][vision_end].item() == IGNORE_INDEX
    pad = (ex["input_ids"][tail:] == ids.pad).nonzero().flatten() + tail
    assert pad.numel() == 1 and ex["labels"][pad].item() == IGNORE_INDEX


def test_mixed_frame_counts_collate_and_give_the_manual_loss(tiny, record):
    model, tokenizer, config = tiny
    examples = [sft(tokenizer, record, n, config, template="direct") for n in (4, 6, 8)]
    batch = collate_sft(examples, tokenizer.pad_token_id)
    B, L = batch["input_ids"].shape
    assert B == 3 and L == max(ex["input_ids"].numel() for ex in examples)
    for key in ("input_ids", "attention_mask", "labels", "mm_token_type_ids"):
        assert batch[key].shape == (B, L), key
    assert batch["position_ids"].shape == (3, B, L)
    assert batch["video_grid_thw"].tolist() == [[2, 4, 4], [3, 4, 4], [4, 4, 4]]
    assert batch["second_per_grid_ts"].shape == (3,) and batch["second_per_grid_ts"].dtype == torch.float32
    assert batch["pixel_values_videos"].shape == (32 + 48 + 64, 1176)
    # rows concatenated in sample order
    assert torch.equal(batch["pixel_values_videos"][32:80], examples[1]["pixel_values_videos"])
    # per-example positions, padded, equal the batch computation with the model's own config
    assert torch.equal(batch["position_ids"], model_inputs_positions(model.config, batch)["position_ids"])

    with torch.no_grad():
        out = model(**model_inputs(batch))
    assert math.isfinite(out.loss.item())
    # manual: next-token cross-entropy over the assistant positions only, built from the counts
    logits = out.logits[:, :-1].float()  # (B, L-1, V)
    targets = batch["input_ids"][:, 1:]  # (B, L-1)
    mask = torch.zeros(B, L, dtype=torch.bool)
    for b, ex in enumerate(examples):
        mask[b, ex["num_prompt_tokens"] : ex["input_ids"].numel()] = True
    mask = mask[:, 1:]
    per_token = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    manual = per_token[mask.reshape(-1)].mean()
    assert out.loss.item() == pytest.approx(manual.item(), abs=1e-5)


def test_every_batch_carries_mm_token_type_ids_and_second_per_grid_ts(tiny, record):
    _, tokenizer, config = tiny
    for batch in (
        collate_sft([sft(tokenizer, record, 2, config)], tokenizer.pad_token_id),
        collate_prompts([prompt(tokenizer, record, 2, config)], tokenizer.pad_token_id),
    ):
        assert "mm_token_type_ids" in batch and "second_per_grid_ts" in batch
        video_tokens = batch["input_ids"] == special_ids(tokenizer).video_pad
        assert torch.equal(batch["mm_token_type_ids"] == 2, video_tokens)
        assert "mm_token_type_ids" in model_inputs(batch) and "second_per_grid_ts" in model_inputs(batch)


def test_prompt_batches_are_left_padded(tiny, record):
    _, tokenizer, config = tiny
    prompts = [prompt(tokenizer, record, n, config) for n in (2, 8)]
    batch = collate_prompts(prompts, tokenizer.pad_token_id)
    assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][:, -1].all()
    assert (batch["input_ids"][0, : 12] == tokenizer.pad_token_id).all()


def test_budget_overflow_names_the_record_and_the_counts(tiny, record):
    _, tokenizer, config = tiny
    video, ts = frames(8)
    full = encode_sft_example(tokenizer, record, video, config, timestamps=ts)
    with pytest.raises(TokenBudgetError) as info:
        encode_sft_example(tokenizer, record, video, config, timestamps=ts,
                           budget=TokenBudget(full["input_ids"].numel() - 1))
    message = str(info.value)
    assert "synthetic-3" in message and "problem_id 3" in message
    assert f"{full['input_ids'].numel()} tokens" in message
    assert "16 video" in message and "8 frames" in message
    assert "never truncated" in message


def test_reduce_frames_halves_until_it_fits(tiny, record):
    _, tokenizer, config = tiny
    video, ts = frames(16)
    full = encode_sft_example(tokenizer, record, video, config, timestamps=ts)  # 16 frames -> 32 video tokens
    # 16 frames do not fit, 8 do not either (16 tokens fewer), 4 frames (8 video tokens) do
    max_length = full["input_ids"].numel() - 24
    ex = encode_sft_example(tokenizer, record, video, config, timestamps=ts,
                            budget=TokenBudget(max_length, on_overflow="reduce_frames"))
    assert ex["num_frames"] == 4 and ex["num_video_tokens"] == 8
    assert ex["input_ids"].numel() <= max_length
    assert ex["video_grid_thw"].tolist() == [[2, 4, 4]]
    # frames spread over the whole clip: first and last kept, so one temporal step is 5 x 0.5 s x 2
    assert ex["second_per_grid_ts"].item() == pytest.approx(2 * 2.5)
    with pytest.raises(TokenBudgetError, match="min_frames=4"):
        encode_sft_example(tokenizer, record, video, config, timestamps=ts,
                           budget=TokenBudget(max_length - 1, on_overflow="reduce_frames", min_frames=4))


def test_subsample_keeps_first_and_last():
    assert subsample_frames(16, 8).tolist() == [0, 2, 4, 6, 9, 11, 13, 15]
    assert subsample_frames(3, 8).tolist() == [0, 1, 2]


def test_a_video_clip_is_accepted_and_an_empty_target_is_refused(tiny, record):
    _, tokenizer, config = tiny
    video, ts = frames(4)
    clip = VideoClip(frames=video, timestamps=ts, indices=np.arange(4), duration=2.0, fps=2.0, total_frames=4,
                     source="<memory>")
    ex = encode_sft_example(tokenizer, record, clip, config)
    from_frames = encode_sft_example(tokenizer, record, video, config, timestamps=ts)
    assert torch.equal(ex["input_ids"], from_frames["input_ids"])
    with pytest.raises(ValueError, match="no SFT target"):
        encode_sft_example(tokenizer, record.replace(process="", solution=""), clip, config)


def test_budget_settings_are_validated():
    with pytest.raises(ValueError, match="on_overflow"):
        TokenBudget(100, on_overflow="truncate")


def test_position_constants_are_checked_against_the_model(tiny):
    model, _, config = tiny
    check_position_config(model.config, config)
    with pytest.raises(ValueError, match="tokens_per_second"):
        check_position_config(model.config, config, tokens_per_second=25)
