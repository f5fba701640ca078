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
    """The released Qwen2.5-VL-7B-Instruct architecture (its config.json), for meta-device checks and
    the GPU check's random-weight 7B.

    Text: hidden 3584, 28 layers, 28 heads, 4 KV heads, intermediate 18944, vocab 152064, max positions
    128000, rope_theta 1e6, mrope_section [16, 24, 24], untied lm_head.
    Vision: depth 32, hidden 1280, intermediate 3420, 16 heads, out 3584, patch 14, merge 2, temporal
    patch 2, window 112, full attention in blocks [7, 15, 23, 31], tokens_per_second 2.
    """
    return _qwen25vl_released_config(vocab=152064, hidden=3584, intermediate=18944, layers=28, heads=28,
                                     kv_heads=4, tied=False)


def qwen25vl_3b_config() -> Qwen2_5_VLConfig:
    """The released Qwen2.5-VL-3B-Instruct architecture (its config.json): hidden 2048, 36 layers, 16
    heads, 2 KV heads, intermediate 11008, vocab 151936, lm_head tied to the embedding; the same vision
    tower as the 7B with out 2048. Used by the GPU check's 3B-shaped GRPO step."""
    return _qwen25vl_released_config(vocab=151936, hidden=2048, intermediate=11008, layers=36, heads=16,
                                     kv_heads=2, tied=True)


def _qwen25vl_released_config(*, vocab: int, hidden: int, intermediate: int, layers: int, heads: int,
                              kv_heads: int, tied: bool) -> Qwen2_5_VLConfig:
    from transformers import Qwen2_5_VLConfig

    return Qwen2_5_VLConfig(
        text_config={
            "vocab_size": vocab,
            "hidden_size": hidden,
            "intermediate_size": intermediate,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "hidden_act": "silu",
            "max_position_embeddings": 128000,
            "rms_norm_eps": 1e-6,
            "use_sliding_window": False,
            "sliding_window": 32768,
            "max_window_layers": layers,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
            "bos_token_id": QWEN25_SPECIAL_IDS["<|endoftext|>"],
            "eos_token_id": QWEN25_SPECIAL_IDS["<|im_end|>"],
            "tie_word_embeddings": tied,
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
            "out_hidden_size": hidden,
        },
        image_token_id=QWEN25_SPECIAL_IDS["<|image_pad|>"],
        video_token_id=QWEN25_SPECIAL_IDS["<|video_pad|>"],
        vision_start_token_id=QWEN25_SPECIAL_IDS["<|vision_start|>"],
        vision_end_token_id=QWEN25_SPECIAL_IDS["<|vision_end|>"],
        tie_word_embeddings=tied,
    )


# --- Qwen3-VL -------------------------------------------------------------------------------------
if TYPE_CHECKING:
    from transformers import Qwen3VLConfig

QWEN3VL_VOCAB_SIZE = 151_936  # the released Qwen3-VL embedding rows (the 151,669 tokens rounded up)
# config.json token-id keys -> the token each names (the ids a config gets without a tokenizer)
QWEN3VL_CONFIG_TOKENS = {
    "bos_token_id": "<|endoftext|>", "pad_token_id": "<|endoftext|>", "eos_token_id": "<|im_end|>",
    "image_token_id": "<|image_pad|>", "video_token_id": "<|video_pad|>",
    "vision_start_token_id": "<|vision_start|>", "vision_end_token_id": "<|vision_end|>",
}


def interleaved_mrope_section(head_dim: int) -> list[int]:
    """(time, height, width) frequency counts for Qwen3-VL's *interleaved* M-RoPE ([24, 20, 20] for
    head_dim 128, [6, 5, 5] for 32, [4, 2, 2] for 16).

    Qwen3-VL assigns frequency i of head_dim / 2 to height when i % 3 == 1 and i < 3 * h, to width when
    i % 3 == 2 and i < 3 * w, and to time otherwise (Qwen3VLTextRotaryEmbedding.recomposition_frequencies),
    so h and w must satisfy 3 * h, 3 * w <= head_dim / 2; the released 20 / 64 share is kept.
    """
    if head_dim % 2:
        raise ValueError(f"head_dim must be even, got {head_dim}")
    half = head_dim // 2
    spatial = half * 20 // 64
    return [half - 2 * spatial, spatial, spatial]


def qwen3vl_tiny_config(
    tokenizer: PreTrainedTokenizerBase | None = None,
    *,
    vocab_size: int | None = None,
    hidden: int = 64,
    intermediate: int = 128,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    head_dim: int | None = None,
    mrope_section: list[int] | None = None,
    max_position_embeddings: int = 4096,
    rope_theta: float = 5e6,
    vision_depth: int = 2,
    vision_hidden: int = 32,
    vision_intermediate: int = 64,
    vision_heads: int = 2,
    num_position_embeddings: int = 256,
    deepstack_visual_indexes: list[int] | None = None,
) -> Qwen3VLConfig:
    """A small `Qwen3VLConfig` (288,544 params at the defaults with the 704-row vocabulary of the tiny
    tokenizer `vt_model.tiny` builds for this family).

    Same conventions as `qwen25vl_tiny_config`: token ids and the vocabulary size (len(tokenizer) rounded
    up to a multiple of 64) come from the tokenizer; without one, the released Qwen3-VL ids and its
    151,936-row vocabulary are assumed. head_dim defaults to hidden / heads; mrope_section to
    `interleaved_mrope_section(head_dim)` (it must sum to head_dim / 2). The vision tower has Qwen3-VL's
    geometry (patch 16, merge 2, temporal patch 2), a num_position_embeddings-entry learned position
    grid (a square number) and, by default, one DeepStack merger fed by vision block 0, so the DeepStack
    path runs in tests.
    """
    from transformers import Qwen3VLConfig

    head_dim = head_dim or hidden // heads
    if heads % kv_heads:
        raise ValueError(f"heads {heads} not divisible by kv_heads {kv_heads}")
    if vision_hidden % vision_heads:
        raise ValueError(f"vision_hidden {vision_hidden} not divisible by vision_heads {vision_heads}")
    if math.isqrt(num_position_embeddings) ** 2 != num_position_embeddings:
        raise ValueError(f"num_position_embeddings must be a square number, got {num_position_embeddings}")
    mrope_section = list(mrope_section) if mrope_section is not None else interleaved_mrope_section(head_dim)
    half = head_dim // 2
    if len(mrope_section) != 3 or sum(mrope_section) != half or 3 * max(mrope_section[1:]) > half:
        raise ValueError(f"mrope_section {mrope_section} must be 3 numbers summing to head_dim/2 = {half} "
                         "with 3 * height and 3 * width <= head_dim/2 (interleaved layout)")
    deepstack = list(deepstack_visual_indexes) if deepstack_visual_indexes is not None else [0]
    if any(not 0 <= i < vision_depth for i in deepstack):
        raise ValueError(f"deepstack_visual_indexes {deepstack} must index the {vision_depth} vision blocks")
    # Qwen3-VL keeps Qwen2.5's special tokens at the same ids
    ids = special_token_ids(tokenizer) if tokenizer is not None else {
        key: QWEN25_SPECIAL_IDS[token] for key, token in QWEN3VL_CONFIG_TOKENS.items()}
    vocab_size = vocab_size or (round_up(len(tokenizer)) if tokenizer is not None else QWEN3VL_VOCAB_SIZE)
    if tokenizer is not None and vocab_size < len(tokenizer):
        raise ValueError(f"vocab_size {vocab_size} < tokenizer size {len(tokenizer)}")
    text_config = {
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": max_position_embeddings,
        "rms_norm_eps": 1e-6,
        # mrope_interleaved is what the released configs carry; transformers 5.x always interleaves
        "rope_parameters": {"rope_type": "default", "rope_theta": rope_theta, "mrope_section": mrope_section,
                            "mrope_interleaved": True},
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
        "hidden_act": "gelu_pytorch_tanh",
        "in_channels": 3,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "out_hidden_size": hidden,
        "num_position_embeddings": num_position_embeddings,
        "deepstack_visual_indexes": deepstack,
    }
    return Qwen3VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["image_token_id"],
        video_token_id=ids["video_token_id"],
        vision_start_token_id=ids["vision_start_token_id"],
        vision_end_token_id=ids["vision_end_token_id"],
        tie_word_embeddings=False,
    )


def qwen3vl_8b_config() -> Qwen3VLConfig:
    """The released Qwen3-VL-8B-Instruct architecture (its config.json), for meta-device checks and the
    memory plan of experiments/video_thinker_qwen3vl_8b.

    Text: hidden 4096, 36 layers, 32 heads, 8 KV heads, head_dim 128, intermediate 12288, vocab 151936,
    max positions 262144, rope_theta 5e6, interleaved mrope_section [24, 20, 20], untied lm_head.
    Vision: depth 27, hidden 1152, intermediate 4304, 16 heads, out 4096, patch 16, merge 2, temporal
    patch 2, a 48 x 48 learned position grid (2304), DeepStack mergers fed by blocks [8, 16, 24].
    """
    return qwen3vl_tiny_config(
        hidden=4096, intermediate=12288, layers=36, heads=32, kv_heads=8, head_dim=128,
        max_position_embeddings=262144, rope_theta=5e6, vision_depth=27, vision_hidden=1152,
        vision_intermediate=4304, vision_heads=16, num_position_embeddings=2304,
        deepstack_visual_indexes=[8, 16, 24],
    )
