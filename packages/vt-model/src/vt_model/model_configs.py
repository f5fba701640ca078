"""Model configs by family and size, built in code with no weights: `<family>_<size>_config()`.

Qwen2.5-VL: `qwen25vl_tiny_config` (the random test model; sizes and vocabulary are parameters, token
ids come from the tokenizer) and `qwen25vl_7b_config` (the released 7B architecture, for meta-device
checks). A new family or size adds its function here.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from vt_model.offline_tokenizers import (
    QWEN25_NUM_BPE_RANKS,
    QWEN25_SPECIAL_IDS,
    QWEN25_SPECIAL_TOKENS,
    special_token_ids,
)

if TYPE_CHECKING:  # transformers costs ~3 s to import; only the functions that need it import it
    from transformers import PreTrainedTokenizerBase, Qwen2_5_VLConfig


def default_mrope_section(head_dim: int) -> list[int]:
    """(time, height, width) split of head_dim / 2 frequencies in Qwen's 1 : 1.5 : 1.5 ratio
    ([16, 24, 24] for head_dim 128, [4, 6, 6] for 32, [2, 3, 3] for 16)."""
    if head_dim % 2:
        raise ValueError(f"head_dim must be even, got {head_dim}")
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


def round_up(n: int, multiple: int = 64) -> int:
    return multiple * math.ceil(n / multiple)


def qwen25vl_tiny_config(
    tokenizer: PreTrainedTokenizerBase | None = None,
    *,
    vocab_size: int | None = None,
    hidden: int = 64,
    intermediate: int = 128,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    mrope_section: list[int] | None = None,
    max_position_embeddings: int = 4096,
    rope_theta: float = 1e6,
    vision_depth: int = 2,
    vision_hidden: int = 32,
    vision_intermediate: int = 64,
    vision_heads: int = 2,
    tokens_per_second: int = 2,
    window_size: int = 112,
) -> Qwen2_5_VLConfig:
    """A small `Qwen2_5_VLConfig` (defaults: stack.md §5 sizes; 248,032 params with the tiny vocabulary).

    Token ids and the vocabulary size (len(tokenizer) rounded up to a multiple of 64) come from the
    tokenizer; without one, the real Qwen2.5 ids and a 151,680 vocabulary are assumed. mrope_section
    must sum to head_dim / 2 (head_dim = hidden / heads); by default it is split 1 : 1.5 : 1.5.
    """
    from transformers import Qwen2_5_VLConfig

    if hidden % heads or heads % kv_heads:
        raise ValueError(f"need hidden % heads == 0 == heads % kv_heads ({hidden}, {heads}, {kv_heads})")
    if vision_hidden % vision_heads:
        raise ValueError(f"vision_hidden {vision_hidden} not divisible by vision_heads {vision_heads}")
    head_dim = hidden // heads
    mrope_section = list(mrope_section) if mrope_section is not None else default_mrope_section(head_dim)
    if sum(mrope_section) != head_dim // 2 or len(mrope_section) != 3:
        raise ValueError(
            f"mrope_section {mrope_section} must be 3 numbers summing to head_dim/2 = {head_dim // 2}"
        )
    if tokenizer is not None:
        ids = special_token_ids(tokenizer)
        vocab_size = vocab_size or round_up(len(tokenizer))
        if vocab_size < len(tokenizer):
            raise ValueError(f"vocab_size {vocab_size} < tokenizer size {len(tokenizer)}")
    else:
        ids = {
            "bos_token_id": QWEN25_SPECIAL_IDS["<|endoftext|>"],
            "pad_token_id": QWEN25_SPECIAL_IDS["<|endoftext|>"],
            "eos_token_id": QWEN25_SPECIAL_IDS["<|im_end|>"],
            "image_token_id": QWEN25_SPECIAL_IDS["<|image_pad|>"],
            "video_token_id": QWEN25_SPECIAL_IDS["<|video_pad|>"],
            "vision_start_token_id": QWEN25_SPECIAL_IDS["<|vision_start|>"],
            "vision_end_token_id": QWEN25_SPECIAL_IDS["<|vision_end|>"],
        }
        vocab_size = vocab_size or round_up(QWEN25_NUM_BPE_RANKS + len(QWEN25_SPECIAL_TOKENS))
    text_config = {
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "hidden_act": "silu",
        "max_position_embeddings": max_position_embeddings,
        "rms_norm_eps": 1e-6,
        "use_sliding_window": False,
        "max_window_layers": layers,
        "rope_parameters": {"rope_type": "default", "rope_theta": rope_theta, "mrope_section": mrope_section},
        "bos_token_id": ids["bos_token_id"],
        "eos_token_id": ids["eos_token_id"],
        "pad_token_id": ids["pad_token_id"],
        "tie_word_embeddings": False,
    }
    vision_config = {
        "depth": vision_depth,
        "hidden_size": vision_hidden,
        "intermediate_size": vision_intermediate,
        "num_heads": vision_heads,
        "hidden_act": "silu",
        "in_channels": 3,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "tokens_per_second": tokens_per_second,
        "window_size": window_size,
        "fullatt_block_indexes": [vision_depth - 1],
        "out_hidden_size": hidden,
    }
    return Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["image_token_id"],
        video_token_id=ids["video_token_id"],
        vision_start_token_id=ids["vision_start_token_id"],
        vision_end_token_id=ids["vision_end_token_id"],
        tie_word_embeddings=False,
    )


def qwen25vl_7b_config() -> Qwen2_5_VLConfig:
    """The released Qwen2.5-VL-7B-Instruct architecture (its config.json), for meta-device checks.

    Text: hidden 3584, 28 layers, 28 heads, 4 KV heads, intermediate 18944, vocab 152064 (the 3B uses
    151936), max positions 128000, rope_theta 1e6, mrope_section [16, 24, 24], untied lm_head.
    Vision: depth 32, hidden 1280, intermediate 3420, 16 heads, out 3584, patch 14, merge 2, temporal
    patch 2, window 112, full attention in blocks [7, 15, 23, 31], tokens_per_second 2.
    """
    from transformers import Qwen2_5_VLConfig

    return Qwen2_5_VLConfig(
        text_config={
            "vocab_size": 152064,
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_hidden_layers": 28,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "hidden_act": "silu",
            "max_position_embeddings": 128000,
            "rms_norm_eps": 1e-6,
            "use_sliding_window": False,
            "sliding_window": 32768,
            "max_window_layers": 28,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
            "bos_token_id": QWEN25_SPECIAL_IDS["<|endoftext|>"],
            "eos_token_id": QWEN25_SPECIAL_IDS["<|im_end|>"],
            "tie_word_embeddings": False,
        },
        vision_config={
            "depth": 32,
            "hidden_size": 1280,
            "intermediate_size": 3420,
            "num_heads": 16,
            "hidden_act": "silu",
            "in_channels": 3,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "tokens_per_second": 2,
            "window_size": 112,
            "fullatt_block_indexes": [7, 15, 23, 31],
            "out_hidden_size": 3584,
        },
        image_token_id=QWEN25_SPECIAL_IDS["<|image_pad|>"],
        video_token_id=QWEN25_SPECIAL_IDS["<|video_pad|>"],
        vision_start_token_id=QWEN25_SPECIAL_IDS["<|vision_start|>"],
        vision_end_token_id=QWEN25_SPECIAL_IDS["<|vision_end|>"],
        tie_word_embeddings=False,
    )
