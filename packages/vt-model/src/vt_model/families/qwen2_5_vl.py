"""The Qwen2.5-VL family: a thin adapter over the existing Qwen2.5-VL code (vt_model.processing,
vt_model.positions, vt_model.prompts, vt_model.model_configs). It only delegates, so its outputs are
byte-identical to calling those functions directly (tests/test_families.py pins that).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from vt_model.processing import (
    FAST_MIN_PIXELS,
    VideoInputs,
    VideoProcessorConfig,
    collate_video_inputs,
    expand_video_tokens,
    preprocess_video,
)
from vt_model.prompts import special_ids, tokenize


class Qwen25VLFamily:
    """Qwen2.5-VL (and Qwen2-VL's video path): 14-px patches, one block of <|video_pad|> per video,
    absolute-time temporal M-RoPE (`second_per_grid_ts`), the original text-after-video position rule."""

    name = "qwen2_5_vl"
    model_types = ("qwen2_5_vl",)
    # forward kwargs a collated batch may carry (vt_model.collate.MODEL_KEYS)
    model_input_keys = ("input_ids", "attention_mask", "labels", "mm_token_type_ids", "position_ids",
                        "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")
    per_video_keys = ("video_grid_thw", "second_per_grid_ts")  # pixel rows are per patch, not per video

    @property
    def chat_template(self) -> str:
        from vt_model.offline_tokenizers import QWEN25_VL_CHAT_TEMPLATE

        return QWEN25_VL_CHAT_TEMPLATE

    # --- frames ------------------------------------------------------------------------------------
    def video_config(self, **overrides: Any) -> VideoProcessorConfig:
        return VideoProcessorConfig(**overrides)

    def tiny_video_config(self, **overrides: Any) -> VideoProcessorConfig:
        """The tiny model's default: the paper's budget with the fast floor (small clips stay small)."""
        return VideoProcessorConfig(**{"min_pixels": FAST_MIN_PIXELS, **overrides})

    def video_config_from_pretrained(self, directory: str | os.PathLike[str]) -> VideoProcessorConfig:
        return VideoProcessorConfig.from_pretrained(directory)

    def preprocess_video(self, frames: torch.Tensor | np.ndarray,
                         timestamps: Sequence[float] | np.ndarray | torch.Tensor,
                         config: VideoProcessorConfig | None = None) -> VideoInputs:
        return preprocess_video(frames, timestamps, config)

    # --- prompt layout -----------------------------------------------------------------------------
    def encode_video_prompt(self, tokenizer: Any, text: str, videos: Sequence[VideoInputs]) -> list[int]:
        """Tokenise the rendered prompt, then expand the i-th <|video_pad|> to videos[i]'s token count."""
        return expand_video_tokens(tokenize(tokenizer, text), special_ids(tokenizer).video_pad,
                                   [v.num_video_tokens for v in videos])

    def collate_videos(self, videos: Sequence[VideoInputs]) -> dict[str, torch.Tensor]:
        return collate_video_inputs(videos)

    def position_ids(self, model_config: Any, batch: Mapping[str, Any]) -> torch.Tensor:
        from vt_model.positions import model_inputs_positions

        return model_inputs_positions(model_config, batch)["position_ids"]

    def video_features(self, model: Any, pixel_values_videos: torch.Tensor,
                       video_grid_thw: torch.Tensor) -> list[torch.Tensor]:
        """The vision tower (incl. the merger) once: one (n_tokens_i, hidden) tensor per video."""
        out = model.get_video_features(pixel_values_videos, video_grid_thw, return_dict=True)
        return list(out.pooler_output)

    def video_encoder_outputs(self, model_config: Any, features: Sequence[torch.Tensor]) -> dict[str, Any]:
        """Per-row video features -> the forward's `mm_encoder_outputs` kwarg."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        return {"video": BaseModelOutputWithPooling(pooler_output=list(features))}

    # --- building a model directory ----------------------------------------------------------------
    def prepare_tokenizer(self, tokenizer: Any) -> Any:
        """vt_model.offline_tokenizers already builds Qwen2.5 tokenizers with this family's template."""
        return tokenizer

    def tiny_corpus(self) -> list[str]:
        return []

    def tiny_config(self, tokenizer: Any | None = None, **sizes: Any) -> Any:
        from vt_model.model_configs import qwen25vl_tiny_config

        return qwen25vl_tiny_config(tokenizer, **sizes)

    def model_class(self) -> type:
        from vt_model.loading import model_class

        return model_class("qwen2_5_vl")


FAMILY = Qwen25VLFamily()
