"""The model-family registry (lookup by name and by config.json model_type) and the Qwen2.5-VL family,
which must produce byte-identical pixels, ids and positions to the Qwen2.5-VL code it delegates to."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vt_data.records import VideoQA
from vt_model.families import ModelFamily, family_for_config, family_from_pretrained, get_family
from vt_model.positions import model_inputs_positions
from vt_model.processing import VideoProcessorConfig, collate_video_inputs, preprocess_video
from vt_model.prompts import build_messages, encode_prompt, render_prompt

PANCAKE = Path(__file__).resolve().parents[3] / "tests/data/decord/examples/flipping_a_pancake.mkv"


def test_lookup_by_family_name_and_model_type(tiny_dir):
    qwen25, qwen3 = get_family("qwen2_5_vl"), get_family("qwen3_vl")
    assert qwen25.name == "qwen2_5_vl" and qwen3.name == "qwen3_vl"
    for model_type in ("qwen3_vl_moe", "qwen3_5", "qwen3_5_moe"):  # same video path as Qwen3-VL
        assert get_family(model_type) is qwen3
    assert get_family(qwen3) is qwen3
    assert isinstance(qwen25, ModelFamily) and isinstance(qwen3, ModelFamily)
    assert family_from_pretrained(tiny_dir) is qwen25
    assert family_for_config(json.loads((tiny_dir / "config.json").read_text())) is qwen25
    with pytest.raises(KeyError, match="known: "):
        get_family("llava")
    with pytest.raises(FileNotFoundError):
        family_from_pretrained(tiny_dir / "missing")


def test_qwen25_family_is_byte_identical_to_the_code_it_wraps(tiny_model, tiny_tokenizer):
    """A Qwen2.5-VL golden output does not change: pixels, ids and positions on the real pancake video."""
    from vt_data.video import read_video

    family = get_family("qwen2_5_vl")
    clip = read_video(PANCAKE, num_frames=16)
    config = family.video_config()
    assert config == VideoProcessorConfig()
    ours = family.preprocess_video(clip.frames, clip.timestamps, config)
    direct = preprocess_video(clip.frames, clip.timestamps, config)
    assert torch.equal(ours.pixel_values_videos, direct.pixel_values_videos)
    assert torch.equal(ours.video_grid_thw, direct.video_grid_thw)
    assert ours.second_per_grid_ts == direct.second_per_grid_ts

    record = VideoQA(problem="What happens to the pancake?", path=str(PANCAKE), data_source="test",
                     options=["A. it flips", "B. it burns"], process="", solution="<answer>A</answer>")
    text = render_prompt(tiny_tokenizer, build_messages(record, "video_thinker"))
    ids = family.encode_video_prompt(tiny_tokenizer, text, [ours])
    encoded = encode_prompt(tiny_tokenizer, record, direct, "video_thinker")
    assert ids == encoded["input_ids"].tolist()

    batch = {"input_ids": encoded["input_ids"][None], "attention_mask": encoded["attention_mask"][None],
             **family.collate_videos([ours])}
    for key, value in collate_video_inputs([direct]).items():
        assert torch.equal(batch[key], value)
    assert set(batch) <= set(family.model_input_keys) and set(family.per_video_keys) <= set(batch)
    positions = family.position_ids(tiny_model.config, batch)
    assert torch.equal(positions, model_inputs_positions(tiny_model.config, batch)["position_ids"])


def test_qwen25_tiny_and_template_defaults_are_unchanged(tiny_dir, tiny_tokenizer):
    family = get_family("qwen2_5_vl")
    assert family.video_config_from_pretrained(tiny_dir) == family.tiny_video_config()
    assert tiny_tokenizer.chat_template == family.chat_template
    assert json.loads((tiny_dir / "vt_model_tiny.json").read_text())["family"] == "qwen2_5_vl"
