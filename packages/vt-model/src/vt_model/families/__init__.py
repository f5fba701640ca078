"""Model families: one small object per Qwen-VL generation that owns everything between decoded frames
and the model's forward kwargs, chosen from a checkpoint's config.json `model_type`.

A family answers, for its checkpoints:
  * frame sampling and resizing: `video_config()` / `video_config_from_pretrained(dir)` give the
    preprocessing settings (frames to ask the reader for, pixel budgets, patch geometry);
  * `preprocess_video(frames, timestamps, config)`: uint8 frames -> the processor-equivalent tensors;
  * the video-token layout in the prompt: `encode_video_prompt(tokenizer, text, videos)` turns a rendered
    chat prompt (one placeholder per video, as the chat template writes it) into input ids with every
    placeholder expanded (Qwen2.5-VL: N copies of <|video_pad|>; Qwen3-VL: `<t seconds>` text between
    per-frame vision blocks);
  * `collate_videos(videos)`, `model_input_keys` and `per_video_keys`: the vision kwargs, the forward
    kwargs a batch carries, and which of them hold one row per video (to index when rows share a video);
  * `position_ids(model_config, batch)`: the family's own 3-D M-RoPE rule, passed to the model explicitly;
  * `video_features(model, pixel_values_videos, video_grid_thw)` / `video_encoder_outputs(model_config,
    features)`: the vision tower run once, one tensor per video, and those tensors back as the forward's
    `mm_encoder_outputs` (Qwen3-VL packs its DeepStack features beside the merged ones);
  * `chat_template` / `prepare_tokenizer(tokenizer)`, `tiny_config(...)`, `model_class()`: what
    `vt_model.tiny` needs to write a complete random model directory of the family;
  * vLLM (`vt_model.engines.vllm`, `vt_grpo.vllm_rollout`): `vllm_frames_request(text, frames, timestamps,
    config)` and `vllm_embeds_request(tokenizer, prompt, features)` build requests that vLLM's processor
    for the family expands to exactly our prompt ids (timing, video tokens and grid included; from
    decoded frames, or from features of our own vision tower), and `vllm_position_mismatch(model_config,
    prompt)` says why vLLM would still place a prompt's M-RoPE ids differently (None when it would not).

Callers above vt-model hold a family object and never branch on its name. Family modules are imported on
first lookup, so importing this registry stays cheap and free of import cycles with vt_model.prompts.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    import torch

# family name -> module defining `FAMILY`; config.json model_type -> family name.
FAMILY_MODULES = {
    "qwen2_5_vl": "vt_model.families.qwen2_5_vl",
    "qwen3_vl": "vt_model.families.qwen3_vl",
}
MODEL_TYPE_FAMILIES = {
    "qwen2_5_vl": "qwen2_5_vl",
    "qwen3_vl": "qwen3_vl",
    # MoE differs from dense only in the text model's class; the video path is the same
    "qwen3_vl_moe": "qwen3_vl",
    # Qwen3.5 uses Qwen3-VL's processor, video processor and rope rule (transformers 5.23:
    # processing_auto / video_processing_auto map qwen3_5* to Qwen3VLProcessor / Qwen3VLVideoProcessor;
    # Qwen3_5Model.get_rope_index splits the video grid per frame exactly as Qwen3-VL does)
    "qwen3_5": "qwen3_vl",
    "qwen3_5_moe": "qwen3_vl",
}
DEFAULT_FAMILY = "qwen2_5_vl"


@runtime_checkable
class ModelFamily(Protocol):
    """What the rest of the stack may ask of a model family (see the module docstring)."""

    name: str
    model_types: tuple[str, ...]
    model_input_keys: tuple[str, ...]
    per_video_keys: tuple[str, ...]
    chat_template: str

    def video_config(self, **overrides: Any) -> Any: ...

    def tiny_video_config(self, **overrides: Any) -> Any: ...

    def video_config_from_pretrained(self, directory: str | os.PathLike[str]) -> Any: ...

    def preprocess_video(self, frames: torch.Tensor | np.ndarray,
                         timestamps: Sequence[float] | np.ndarray | torch.Tensor,
                         config: Any | None = None) -> Any: ...

    def encode_video_prompt(self, tokenizer: Any, text: str, videos: Sequence[Any]) -> list[int]: ...

    def collate_videos(self, videos: Sequence[Any]) -> dict[str, torch.Tensor]: ...

    def position_ids(self, model_config: Any, batch: Mapping[str, Any]) -> torch.Tensor: ...

    def video_features(self, model: Any, pixel_values_videos: torch.Tensor,
                       video_grid_thw: torch.Tensor) -> list[torch.Tensor]: ...

    def video_encoder_outputs(self, model_config: Any,
                              features: Sequence[torch.Tensor]) -> dict[str, Any]: ...

    def vllm_frames_request(self, text: str, frames: Any, timestamps: Sequence[float],
                            config: Any | None = None) -> dict[str, Any]: ...

    def vllm_embeds_request(self, tokenizer: Any, prompt: Mapping[str, Any],
                            features: torch.Tensor) -> dict[str, Any]: ...

    def vllm_position_mismatch(self, model_config: Any, prompt: Mapping[str, Any]) -> str | None: ...

    def prepare_tokenizer(self, tokenizer: Any) -> Any: ...

    def tiny_corpus(self) -> list[str]: ...

    def tiny_config(self, tokenizer: Any | None = None, **sizes: Any) -> Any: ...

    def model_class(self) -> type: ...


def get_family(name: str | ModelFamily) -> ModelFamily:
    """A family by family name or by config.json model_type (or the family itself)."""
    if not isinstance(name, str):
        return name
    family_name = name if name in FAMILY_MODULES else MODEL_TYPE_FAMILIES.get(name)
    if family_name is None:
        known = sorted(set(FAMILY_MODULES) | set(MODEL_TYPE_FAMILIES))
        raise KeyError(f"unknown model family or model_type {name!r}; known: {', '.join(known)}")
    return importlib.import_module(FAMILY_MODULES[family_name]).FAMILY


def family_for_config(config: Any) -> ModelFamily:
    """The family of a transformers config object or a config.json dict (by its model_type)."""
    if isinstance(config, Mapping):
        model_type = config.get("model_type")
    else:
        model_type = getattr(config, "model_type", None)
    if model_type is None:
        raise ValueError("the config has no model_type")
    return get_family(model_type)


def family_from_pretrained(directory: str | os.PathLike[str]) -> ModelFamily:
    """The family of a local model directory, read from its config.json."""
    config_file = Path(directory).expanduser() / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} does not exist; not a saved model directory")
    return family_for_config(json.loads(config_file.read_text()))


def video_config(family: str | ModelFamily = DEFAULT_FAMILY, **overrides: Any) -> Any:
    """The family's video preprocessing settings with `overrides` (what the Hydra configs instantiate:
    `model.family` picks the family, the data group the frame count and pixel budgets)."""
    return get_family(family).video_config(**overrides)


def video_config_from_pretrained(directory: str | os.PathLike[str]) -> Any:
    """The video preprocessing a local model directory describes, read by the directory's own family."""
    return family_from_pretrained(directory).video_config_from_pretrained(directory)


__all__ = [
    "DEFAULT_FAMILY", "FAMILY_MODULES", "MODEL_TYPE_FAMILIES", "ModelFamily", "family_for_config",
    "family_from_pretrained", "get_family", "video_config", "video_config_from_pretrained",
]
