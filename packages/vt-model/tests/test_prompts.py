"""The one prompt builder (method.md §3, §10.3): golden rendered strings, the option layout, the
frame-time line, and the expansion of the video placeholder with mm_token_type_ids."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vt_data.records import VideoQA
from vt_model.processing import FAST_MIN_PIXELS, VideoProcessorConfig, preprocess_video
from vt_model.prompts import (
    TEMPLATES,
    PromptTemplate,
    build_messages,
    encode_prompt,
    format_timestamps,
    get_template,
    render_prompt,
    special_ids,
    user_text,
)


@pytest.fixture(scope="module")
def tokenizer():
    from vt_model.offline_tokenizers import build_tiny_tokenizer

    return build_tiny_tokenizer()


@pytest.fixture()
def record() -> VideoQA:
    return VideoQA(
        problem="What colour is the shape shown right after the red square?",
        path="videos/clip_0003.mp4",
        data_source="synthetic",
        options=["A. green", "B. blue", "C. red", "D. white"],
        process="<time>00:02-00:04</time> <caption>a green circle</caption> <think>Hmm, green.</think> So A.",
        solution="<answer>A</answer>",
        problem_id=3,
    )


# Written out by hand (not built from the template constants): any change to the wording, the option
# layout or the chat template shows up here and must be a deliberate decision.
GOLDEN_VIDEO_THINKER = (
    "<|im_start|>system\n"
    "You are an expert video analyst. Answer questions about a video using only what can be seen in it.\n"
    "Work through the video segment by segment. For every segment that matters for the question, write "
    "three tags in this order:\n"
    "<time>start-end</time> with the segment's time span as MM:SS-MM:SS,\n"
    "<caption>...</caption> with the key visual details visible in that span,\n"
    "<think>...</think> with what those details mean for the question.\n"
    'Reason out loud the way a person would, with natural remarks such as "hmm", "wait" or "let me check '
    'that again". Double-check your reading of the video when it is uncertain; when the answer is plain, '
    "conclude without detours.\n"
    "After the segments, keep reasoning in plain text to connect what you observed to the answer, then "
    "finish with the answer inside <answer></answer> tags.<|im_end|>\n"
    "<|im_start|>user\n"
    "<|vision_start|><|video_pad|><|vision_end|>What colour is the shape shown right after the red square?\n"
    "Options:\n"
    "A. green\n"
    "B. blue\n"
    "C. red\n"
    "D. white\n"
    "Analyse the key segments of the video with <time>, <caption> and <think> tags, reason your way to a "
    "conclusion, and write only the single letter of the correct option inside <answer></answer>. Follow "
    "the format given in the system message.<|im_end|>\n"
    "<|im_start|>assistant\n"
)

GOLDEN_VIDEO_R1 = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n"
    "<|vision_start|><|video_pad|><|vision_end|>What colour is the shape shown right after the red square?\n"
    "Options:\nA. green\nB. blue\nC. red\nD. white\n"
    "Think about the question step by step inside <think></think> tags, then give only the letter of the "
    "correct option inside <answer></answer> tags.<|im_end|>\n"
    "<|im_start|>assistant\n"
)


def test_golden_video_thinker_prompt(tokenizer, record):
    assert render_prompt(tokenizer, build_messages(record, "video_thinker")) == GOLDEN_VIDEO_THINKER


def test_golden_video_r1_prompt(tokenizer, record):
    assert render_prompt(tokenizer, build_messages(record, "video_r1")) == GOLDEN_VIDEO_R1


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_every_template_uses_the_same_option_layout(tokenizer, record, name):
    # method.md §10.3: "Options:" on its own line, one option per line, the same for every stage
    text = render_prompt(tokenizer, build_messages(record, name))
    assert "?\nOptions:\nA. green\nB. blue\nC. red\nD. white\n" in text
    assert text.count("<|video_pad|>") == 1 and text.endswith("<|im_start|>assistant\n")


def test_video_thinker_system_asks_for_the_tags_in_order():
    system = get_template("video_thinker").system
    positions = [system.index(tag) for tag in ("<time>", "<caption>", "<think>", "<answer>")]
    assert positions == sorted(positions)
    assert "single letter" in get_template("video_thinker").user_suffix


def test_video_item_comes_first_in_the_user_turn(record):
    user = build_messages(record, "video_thinker")[-1]
    assert user["role"] == "user" and [item["type"] for item in user["content"]] == ["video", "text"]


def test_timestamps_line_is_off_by_default_and_in_mmss_when_on(record):
    assert "sampled at" not in user_text(record, "video_thinker")
    text = user_text(record, "video_thinker", timestamps=[0.0, 2.0333, 4.0, 61.5], include_timestamps=True)
    first, second = text.split("\n")[:2]
    assert first == "The frames shown were sampled at these times (MM:SS): 00:00, 00:02, 00:04, 01:01.5"
    assert second == record.problem
    with pytest.raises(ValueError, match="timestamps"):
        user_text(record, "video_thinker", include_timestamps=True)
    assert format_timestamps(np.array([3599.96])) == "1:00:00"


def test_open_question_has_no_options_block(record):
    open_record = record.replace(options=None, problem_type="free-form")
    text = user_text(open_record, "video_thinker")
    assert "Options:" not in text and "only the final answer" in text


def test_unknown_template_names_the_known_ones():
    with pytest.raises(KeyError, match="video_thinker"):
        get_template("nope")
    custom = PromptTemplate(name="x", system=None, user_suffix="Answer.")
    assert get_template(custom) is custom


def test_encode_prompt_expands_the_video_placeholder(tokenizer, record):
    config = VideoProcessorConfig(min_pixels=FAST_MIN_PIXELS)
    frames = np.random.default_rng(0).integers(0, 256, (6, 56, 56, 3), dtype=np.uint8)
    video = preprocess_video(frames, np.arange(6) * 0.5, config)  # grid [3, 4, 4] -> 12 tokens
    out = encode_prompt(tokenizer, record, video, "video_thinker")
    ids = special_ids(tokenizer)
    input_ids = out["input_ids"]  # (L,)
    assert video.num_video_tokens == 12
    assert int((input_ids == ids.video_pad).sum()) == 12
    where = (input_ids == ids.video_pad).nonzero().flatten()
    assert torch.equal(where, torch.arange(where[0], where[0] + 12))  # one contiguous block
    assert input_ids[where[0] - 1] == ids.vision_start and input_ids[where[-1] + 1] == ids.vision_end
    expected_types = 2 * (input_ids == ids.video_pad).long() + (input_ids == ids.image_pad).long()
    assert torch.equal(out["mm_token_type_ids"], expected_types)
    assert out["attention_mask"].sum() == input_ids.numel()
    assert out["video_grid_thw"].shape == (1, 3) and out["second_per_grid_ts"].shape == (1,)
    assert out["second_per_grid_ts"].item() == pytest.approx(1.0)  # 2 frames x 0.5 s
    # the text around the block is exactly the rendered prompt
    raw = tokenizer(out["prompt_text"], add_special_tokens=False)["input_ids"]
    assert len(raw) == input_ids.numel() - 11


def test_encode_prompt_refuses_a_second_placeholder(tokenizer, record):
    video = preprocess_video(np.zeros((2, 56, 56, 3), np.uint8), [0.0, 1.0],
                             VideoProcessorConfig(min_pixels=FAST_MIN_PIXELS))
    bad = record.replace(problem="Look at <|video_pad|> here?")
    with pytest.raises(ValueError, match="exactly one"):
        encode_prompt(tokenizer, bad, video)
