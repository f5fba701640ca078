"""Shared fixtures (conftest is not importable under --import-mode=importlib, so helpers are
factory fixtures): one tiny random Qwen2.5-VL directory per test session (written by vt_model.tiny and
loaded by vt_model.loading, the same path a real checkpoint takes) and a text-video-text input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vt_model.processing import FAST_MIN_PIXELS, VideoInputs, VideoProcessorConfig, preprocess_video


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vt_model.tiny import write_tiny_model

    out = tmp_path_factory.mktemp("tiny-qwen25vl")
    write_tiny_model(out, seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_model(tiny_dir: Path):
    from vt_model.loading import load_model

    return load_model(tiny_dir, dtype="float32", attn_implementation="eager").eval()


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_dir: Path):
    from vt_model.loading import load_tokenizer

    return load_tokenizer(tiny_dir)


def _small_video(num_frames: int = 4, size: int = 56, seed: int = 0, fps: float = 1.0) -> VideoInputs:
    """Random uint8 frames at 1 fps, kept at 56x56 by the fast pixel floor: grid [2, 4, 4], 8 tokens."""
    gen = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 256, (num_frames, size, size, 3), dtype=torch.uint8, generator=gen)
    config = VideoProcessorConfig(num_frames=num_frames, min_pixels=FAST_MIN_PIXELS)
    return preprocess_video(frames, [i / fps for i in range(num_frames)], config)


def _video_batch(tokenizer, video: VideoInputs, question: str = "What colour is the shape?") -> dict:
    """One chat-formatted text-video-text prompt with the placeholder expanded: model kwargs."""
    from vt_model.processing import expand_video_tokens, mm_token_type_ids

    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    video_id = tokenizer.convert_tokens_to_ids("<|video_pad|>")
    ids = expand_video_tokens(tokenizer(text)["input_ids"], video_id, [video.num_video_tokens])
    input_ids = torch.tensor([ids])
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "mm_token_type_ids": mm_token_type_ids(
            input_ids,
            image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
            video_token_id=video_id,
        ),
        **video.model_kwargs(),
    }


@pytest.fixture(scope="session")
def small_video():
    """Factory: small_video(num_frames=4, size=56, seed=0, fps=1.0) -> VideoInputs."""
    return _small_video


@pytest.fixture(scope="session")
def video_batch():
    """Factory: video_batch(tokenizer, video, question) -> model kwargs of one text-video-text prompt."""
    return _video_batch


@pytest.fixture(scope="session")
def last_colour_prompt(tiny_dir: Path, tiny_tokenizer):
    """One encoded prompt ("What colour is the last shape shown?", 4 random 56x56 frames at 0.5 s
    steps, the direct template) for the tiny model: the decode-loop tests sample from it."""
    import numpy as np

    from vt_data.records import VideoQA
    from vt_model.processing import VideoProcessorConfig, preprocess_video
    from vt_model.prompts import encode_prompt

    config = VideoProcessorConfig.from_pretrained(tiny_dir)
    record = VideoQA(problem="What colour is the last shape shown?", path="v.mp4", data_source="synthetic",
                     options=["A. red", "B. blue"], solution="<answer>A</answer>", problem_id=1)
    frames = np.random.default_rng(0).integers(0, 256, (4, 56, 56, 3), dtype=np.uint8)
    video = preprocess_video(frames, np.arange(4) * 0.5, config)
    return encode_prompt(tiny_tokenizer, record, video, "direct")
