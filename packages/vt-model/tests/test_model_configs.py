"""Model configs: the tiny config's M-RoPE split and validation, and the released Qwen2.5-VL-7B
architecture built on the meta device (no weights, no memory): its exact parameter count, and the video
token budget of the paper's setting (16 frames, 128*28*28 pixels)."""

from __future__ import annotations

import pytest

from vt_model.loading import build_on_meta
from vt_model.model_configs import (
    default_mrope_section,
    qwen25vl_3b_config,
    qwen25vl_7b_config,
    qwen25vl_tiny_config,
)
from vt_model.offline_tokenizers import build_tiny_tokenizer
from vt_model.processing import VideoProcessorConfig

# Pinned from build_on_meta; ~8.29e9 is the published size of Qwen2.5-VL-7B-Instruct.
QWEN25VL_7B_PARAMS = 8_292_166_656
QWEN25VL_7B_VISION_PARAMS = 676_550_144
QWEN25VL_7B_LM_HEAD_PARAMS = 152_064 * 3_584  # untied


def test_qwen25vl_7b_on_meta_device():
    model, n_params = build_on_meta(qwen25vl_7b_config())
    assert n_params == QWEN25VL_7B_PARAMS
    assert all(p.device.type == "meta" for p in model.parameters())
    assert sum(p.numel() for p in model.model.visual.parameters()) == QWEN25VL_7B_VISION_PARAMS
    assert model.lm_head.weight.numel() == QWEN25VL_7B_LM_HEAD_PARAMS
    text = model.model.language_model
    assert len(text.layers) == 28 and len(model.model.visual.blocks) == 32
    assert tuple(text.layers[0].self_attn.k_proj.weight.shape) == (4 * 128, 3584)  # 4 KV heads of 128
    config = model.config
    assert config.text_config.rope_parameters["mrope_section"] == [16, 24, 24]
    assert config.vision_config.fullatt_block_indexes == [7, 15, 23, 31]
    assert config.vision_config.tokens_per_second == 2


def test_qwen25vl_3b_on_meta_device():
    """~3.75e9, the published size of Qwen2.5-VL-3B-Instruct; its lm_head is tied (counted once) and its
    vision tower is the 7B's but for the merger's output width."""
    model, n_params = build_on_meta(qwen25vl_3b_config())
    assert n_params == 3_754_622_976
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight
    text = model.model.language_model
    assert len(text.layers) == 36 and tuple(text.layers[0].self_attn.k_proj.weight.shape) == (2 * 128, 2048)
    assert model.config.vision_config.out_hidden_size == 2048


def test_paper_video_budget_for_a_16_by_9_source():
    """640x360 (and 1080p alike) -> 224x420 per frame; 16 frames -> grid [8, 16, 30] -> 960 tokens."""
    config = VideoProcessorConfig()  # 16 frames, min = max = 128*28*28
    for height, width in ((360, 640), (1080, 1920)):
        assert config.resized_size(height, width) == (224, 420)
        assert config.grid_thw(16, height, width) == (8, 16, 30)
        assert config.num_video_tokens(16, height, width) == 960


def test_mrope_section_and_config_validation():
    tokenizer = build_tiny_tokenizer()
    assert default_mrope_section(128) == [16, 24, 24]
    assert default_mrope_section(32) == [4, 6, 6]
    assert default_mrope_section(16) == [2, 3, 3]
    config = qwen25vl_tiny_config(tokenizer)
    assert config.text_config.vocab_size == 704
    assert config.text_config.rope_parameters["mrope_section"] == [2, 3, 3]
    assert config.video_token_id == tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert config.vision_config.out_hidden_size == config.text_config.hidden_size
    assert config.vision_config.fullatt_block_indexes == [1]
    with pytest.raises(ValueError, match="mrope_section"):
        qwen25vl_tiny_config(tokenizer, mrope_section=[2, 2, 2])
    with pytest.raises(ValueError, match="heads"):
        qwen25vl_tiny_config(tokenizer, hidden=60, heads=8)


def test_qwen3vl_8b_on_meta_device():
    """8.77e9, the published size of Qwen3-VL-8B-Instruct (the memory plan of
    experiments/video_thinker_qwen3vl_8b/README.md starts from these counts)."""
    from vt_model.model_configs import qwen3vl_8b_config

    model, n_params = build_on_meta(qwen3vl_8b_config())
    assert n_params == 8_767_123_696
    assert sum(p.numel() for p in model.model.visual.parameters()) == 576_388_336
    assert model.lm_head.weight.numel() == 151_936 * 4_096  # untied
    text = model.model.language_model
    assert len(text.layers) == 36 and len(model.model.visual.blocks) == 27
    assert tuple(text.layers[0].self_attn.k_proj.weight.shape) == (8 * 128, 4096)
    assert model.config.text_config.rope_parameters["mrope_section"] == [24, 20, 20]
    assert model.config.vision_config.deepstack_visual_indexes == [8, 16, 24]
