"""The Qwen3-VL family (dense and MoE; Qwen3.5 shares its video path): torch-only video preprocessing,
the per-frame timestamped video layout in the prompt, and its M-RoPE position rule.

transformers' `Qwen3VLVideoProcessor` needs torchvision, which cannot run next to this project's CPU torch
(shared/docs/stack.md §1), so its algorithm is re-implemented here as read in transformers 5.23
(models/qwen3_vl/video_processing_qwen3_vl.py, processing_qwen3_vl.py, modeling_qwen3_vl.py):

Preprocessing of one video of T RGB uint8 frames (H, W); patch 16, merge 2, temporal patch 2:
  1. `smart_resize(T, H, W)`: the factor is 16 * 2 = 32, and the pixel budget covers the *whole clip*:
     t_bar = round(T / 2) * 2 frames (Python round, half to even) times the rounded frame area must lie in
     [min_pixels, max_pixels] = size["shortest_edge"], size["longest_edge"] (defaults 128 * 32 * 32 and
     768 * 32 * 32). Too large: both sides are divided by sqrt(T * H * W / max_pixels) and floored to
     multiples of 32 (at least 32); too small: multiplied by sqrt(min_pixels / (T * H * W)) and ceiled.
     Sides under 32 are first scaled up (int-truncated) so the shorter one is 32. T < 2 is refused, as the
     processor does. With `cap_pixels_per_frame` (qwen-vl-utils' rule, off by default in 5.23) max_pixels
     becomes T * max(min(max_video_tokens * 32**2, longest_edge // T), int(1.05 * shortest_edge)).
  2. uint8 bicubic antialiased resize (torchvision's CPU path), then fused rescale + normalise with mean
     = std = (0.5, 0.5, 0.5): x -> (x - 127.5) / 127.5.
  3. T padded to even by repeating the last frame; patch rows of 3 * 2 * 16 * 16 = 1536 values in the same
     merge-window order as Qwen2.5-VL (vt_model.processing.patchify); grid [T / 2, h / 16, w / 16].

Layout in the prompt: temporal group k (frames 2k, 2k + 1) gets the text `<{t_k:.1f} seconds>` followed by
`<|vision_start|>` + (h / 32) * (w / 32) `<|video_pad|>` + `<|vision_end|>`, where t_k is the mean of the
two frames' timestamps (the last frame repeated for odd T). The processor takes frame times as
frames_indices / video fps; pass those as `timestamps` for processor parity (vt_data's VideoClip carries
both `indices` / `fps` and decoded presentation times, which agree for constant-frame-rate streams).
How that block replaces the chat template's `<|vision_start|><|video_pad|><|vision_end|>` differs between
releases: transformers 4.57 (the processor Qwen3-VL was released with; sglang keeps a copy in
python/sglang/srt/configs/qwen3_vl.py) and vLLM replace the whole triple; the
generic placeholder replacement of transformers 5.x replaces only `<|video_pad|>`, keeping the template's
outer start/end tokens around the frame blocks (vllm-project/vllm#46817). `outer_vision_tokens=False`
(default) gives the release layout, True the transformers 5.x one; they differ by those two tokens.

Positions: the video grid is split into T / 2 grids [1, h, w] (one per frame block); every vision block
gets temporal id = its start, height / width ids = start + row / column of the merged grid; text resumes
at the block's largest id + 1 (= start + max(h, w) / 2). Time is carried by the timestamp text, not by
the ids, so there is no `second_per_grid_ts` and transformers 4.57 and 5.23 agree. The model takes
pixel_values_videos, video_grid_thw, mm_token_type_ids (needed when it computes positions itself; 5.x
raises without it) and optionally position_ids (3, B, L).

vLLM (0.32; model_executor/models/qwen3_vl.py, used by vt_model.engines.vllm and vt_grpo.vllm_rollout):
  * Its processor replaces a placeholder in the prompt ids with `<t seconds>` + frame block per temporal
    group, each timestamp tokenised on its own (`get_video_repl`). Which placeholder depends on the
    transformers beside it: the whole `<|vision_start|><|video_pad|><|vision_end|>` when transformers'
    Qwen3VLProcessor keeps the generic `replace_video_token`, only `<|video_pad|>` (keeping the outer
    pair) when it overrides it (transformers >= 5.10; `_expands_only_video_token`). `vllm_placeholder`
    makes the same test, and the requests write the placeholder so that vLLM's expansion gives the
    config's layout (`outer_vision_tokens`) either way.
  * Frames: pre-sampled frames are not re-sampled (do_sample_frames False), and the timestamps are
    frames_indices / fps (`_get_video_second_idx`, then the same pair mean as `group_timestamps`), so
    `vllm_video_metadata` passes the frames' own seconds at fps 1: its `<t seconds>` text is ours.
    `min_pixels` / `max_pixels` engine kwargs become the video processor's whole-clip `size`.
  * Precomputed features (`enable_mm_embeds`): `video_embeds` (n_tokens, hidden * (1 + D)), the merged
    features followed by the D DeepStack levels (it splits them at `visual_dim`, exactly
    `Qwen3VLFamily.video_features`' packing), `video_grid_thw` and `timestamps` (one list per video),
    which size and print the replacement; `vllm_embeds_request` reads the timestamps back from our ids.
  * Positions: integer ids from the ids and the grid by the same block rule (`_get_mrope_input_positions`),
    no timing in them, so equal prompt ids give equal positions.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from vt_model.offline_tokenizers import QWEN25_VL_CHAT_TEMPLATE
from vt_model.processing import (
    IMAGE_PREPROCESSOR_FILE,
    VIDEO_PREPROCESSOR_FILE,
    VideoProcessorConfig,
    _as_uint8_video,
    normalize_frames,
    patchify,
)
from vt_model.prompts import VIDEO_PAD, VISION_END, VISION_START, special_ids, tokenize

# transformers' IMAGENET_STANDARD_MEAN / IMAGENET_STANDARD_STD, what Qwen3VLVideoProcessor normalises with
QWEN3_VL_MEAN = (0.5, 0.5, 0.5)
QWEN3_VL_STD = (0.5, 0.5, 0.5)
# Qwen3VLVideoProcessor.size: a budget for the whole clip (t_bar frames), not per frame
QWEN3_VL_MIN_PIXELS = 128 * 32 * 32
QWEN3_VL_MAX_PIXELS = 768 * 32 * 32
# A small floor for fast CPU tests: 4 frames of 56x56 become 64x64 (grid [2, 4, 4], 8 video tokens).
QWEN3_VL_FAST_MIN_PIXELS = 4 * 32 * 32

VIDEO_ITEM = VISION_START + VIDEO_PAD + VISION_END  # what the chat template writes for one video
# Added tokens of the Qwen3 vocabulary after Qwen2.5's 22 specials (ids 151665..151668), non-special.
QWEN3_ADDED_TOKENS = ("<tool_response>", "</tool_response>", "<think>", "</think>")


def smart_resize(num_frames: int, height: int, width: int, temporal_factor: int = 2, factor: int = 32,
                 min_pixels: int = QWEN3_VL_MIN_PIXELS,
                 max_pixels: int = QWEN3_VL_MAX_PIXELS) -> tuple[int, int]:
    """The (height, width) Qwen3-VL resizes a clip's frames to (see the module docstring, step 1)."""
    if num_frames < temporal_factor:
        raise ValueError(f"Qwen3-VL needs at least {temporal_factor} frames per video, got {num_frames}")
    if height <= 0 or width <= 0:
        raise ValueError(f"frame size must be positive, got {height}x{width}")
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"absolute aspect ratio must be at most 200, got {height}x{width}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    t_bar = round(num_frames / temporal_factor) * temporal_factor
    if t_bar * h_bar * w_bar > max_pixels:
        beta = math.sqrt((num_frames * height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif t_bar * h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (num_frames * height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


@dataclass
class Qwen3VLVideoConfig(VideoProcessorConfig):
    """Settings of Qwen3-VL's video preprocessing, its frame sampling and its prompt layout.

    A `VideoProcessorConfig` (same reader-facing fields, geometry and validation) whose pixel budget
    covers the whole clip, so sizes depend on the frame count: use `resized_size(h, w, num_frames)` and
    `grid_thw`. Defaults are Qwen3VLVideoProcessor's: 2 frames per second, 4..768 frames, a whole-clip
    budget of 128 * 32 * 32 .. 768 * 32 * 32 pixels, no per-frame cap. `num_frames` (exclusive with fps)
    asks for a fixed count instead. `outer_vision_tokens`: see the module docstring (False: the layout
    Qwen3-VL was released with).
    """

    num_frames: int | None = None
    max_frames: int = 768
    fps: float | None = 2.0
    min_pixels: int = QWEN3_VL_MIN_PIXELS
    max_pixels: int = QWEN3_VL_MAX_PIXELS
    patch_size: int = 16
    image_mean: tuple[float, float, float] = QWEN3_VL_MEAN
    image_std: tuple[float, float, float] = QWEN3_VL_STD
    min_frames: int = 4
    cap_pixels_per_frame: bool = False
    max_video_tokens: int = 768
    outer_vision_tokens: bool = False

    family: ClassVar[str] = "qwen3_vl"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.min_frames <= self.max_frames:
            raise ValueError(f"need 1 <= min_frames <= max_frames, got {self.min_frames}, {self.max_frames}")
        if self.max_video_tokens < 1:
            raise ValueError("max_video_tokens must be >= 1")

    def max_pixels_for(self, num_frames: int) -> int:
        """The whole-clip upper budget smart_resize uses for a clip of num_frames frames."""
        if not self.cap_pixels_per_frame:
            return self.max_pixels
        frame_cap = self.max_video_tokens * self.factor * self.factor
        per_frame = max(min(frame_cap, self.max_pixels // num_frames), int(self.min_pixels * 1.05))
        return per_frame * num_frames

    def resized_size(self, height: int, width: int, num_frames: int | None = None) -> tuple[int, int]:
        """The frame size for a clip of num_frames frames (required: the budget covers the clip)."""
        if num_frames is None:
            raise ValueError("Qwen3-VL's frame size depends on the clip's frame count; pass num_frames")
        return smart_resize(num_frames, height, width, self.temporal_patch_size, self.factor,
                            self.min_pixels, self.max_pixels_for(num_frames))

    def grid_thw(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        """The `video_grid_thw` row for num_frames source frames of size height x width."""
        h, w = self.resized_size(height, width, num_frames)
        return -(-num_frames // self.temporal_patch_size), h // self.patch_size, w // self.patch_size

    def sample_indices(self, total_frames: int, video_fps: float | None) -> np.ndarray:
        """Which frames Qwen3VLVideoProcessor.sample_frames picks: n = int(total / video_fps * fps) clamped
        to [min_frames, max_frames] and to total (or num_frames), then numpy's float64
        linspace(0, total - 1, n) rounded half to even. A missing video_fps counts as 24,
        as in the processor."""
        if total_frames < 1:
            raise ValueError(f"total_frames must be >= 1, got {total_frames}")
        n = self.num_frames
        if n is None:
            n = int(total_frames / (video_fps or 24) * self.fps)
            n = min(max(n, self.min_frames), self.max_frames, total_frames)
        return np.linspace(0, total_frames - 1, n).round().astype(int)

    # --- a model directory describes its own preprocessing -------------------------------------
    def to_hf_dict(self, processor_type: str = "Qwen3VLVideoProcessor") -> dict[str, Any]:
        """The keys transformers' Qwen3VLVideoProcessor reads (`size` being the whole-clip budget), plus
        `outer_vision_tokens` (ours)."""
        saved = super().to_hf_dict(processor_type)
        for per_frame_key in ("min_pixels", "max_pixels"):  # Qwen2-VL's per-frame keys; not Qwen3-VL's
            saved.pop(per_frame_key)
        return {**saved, "processor_class": "Qwen3VLProcessor", "do_sample_frames": True,
                "min_frames": self.min_frames, "cap_pixels_per_frame": self.cap_pixels_per_frame,
                "max_video_tokens": self.max_video_tokens, "outer_vision_tokens": self.outer_vision_tokens}

    @classmethod
    def from_hf_dict(cls, d: Mapping[str, Any]) -> Qwen3VLVideoConfig:
        """Read a video_preprocessor_config.json (ours or a released checkpoint's), defaults elsewhere."""
        defaults = cls()
        size = d.get("size") or {}
        num_frames = d.get("num_frames")
        return cls(
            num_frames=num_frames,
            fps=None if num_frames is not None else d.get("fps", defaults.fps),
            min_frames=d.get("min_frames", defaults.min_frames),
            max_frames=d.get("max_frames", defaults.max_frames),
            min_pixels=size.get("shortest_edge", defaults.min_pixels),
            max_pixels=size.get("longest_edge", defaults.max_pixels),
            cap_pixels_per_frame=bool(d.get("cap_pixels_per_frame") or False),
            max_video_tokens=d.get("max_video_tokens", defaults.max_video_tokens),
            patch_size=d.get("patch_size", defaults.patch_size),
            merge_size=d.get("merge_size", defaults.merge_size),
            temporal_patch_size=d.get("temporal_patch_size", defaults.temporal_patch_size),
            image_mean=tuple(d.get("image_mean", defaults.image_mean)),
            image_std=tuple(d.get("image_std", defaults.image_std)),
            outer_vision_tokens=bool(d.get("outer_vision_tokens", defaults.outer_vision_tokens)),
        )

    def save_pretrained(self, directory: str | os.PathLike[str]) -> None:
        """Write video_preprocessor_config.json and a preprocessor_config.json carrying the image
        processor's geometry (Qwen2VLImageProcessor with Qwen3-VL's patch size and normalisation)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / VIDEO_PREPROCESSOR_FILE).write_text(json.dumps(self.to_hf_dict(), indent=2) + "\n")
        image = {
            "image_processor_type": "Qwen2VLImageProcessor",
            "processor_class": "Qwen3VLProcessor",
            "patch_size": self.patch_size,
            "merge_size": self.merge_size,
            "temporal_patch_size": self.temporal_patch_size,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
        }
        (directory / IMAGE_PREPROCESSOR_FILE).write_text(json.dumps(image, indent=2) + "\n")


@dataclass
class Qwen3VLVideoInputs:
    """One preprocessed video, ready for Qwen3VLForConditionalGeneration.

    pixel_values_videos: float32 (grid_t * grid_h * grid_w, 1536), rows in merge-window order.
    video_grid_thw:      int64 (1, 3) = [[grid_t, grid_h, grid_w]] in patches (before the 2x2 merge).
    timestamps:          grid_t seconds, one per temporal group (what the `<t seconds>` text shows).
    num_video_tokens:    <|video_pad|> tokens in total (grid_t blocks of grid_h * grid_w / 4).
    frame_size:          (height, width) after smart_resize.
    outer_vision_tokens: the prompt layout (from the config; see the module docstring).
    """

    family: ClassVar[str] = "qwen3_vl"  # the vt_model.families family that encodes these inputs

    pixel_values_videos: torch.Tensor
    video_grid_thw: torch.Tensor
    timestamps: tuple[float, ...]
    num_video_tokens: int
    frame_size: tuple[int, int] = field(default=(0, 0))
    outer_vision_tokens: bool = False

    @property
    def tokens_per_group(self) -> int:
        """<|video_pad|> tokens in one frame block."""
        return self.num_video_tokens // len(self.timestamps)

    def prompt_text(self) -> str:
        """The text this video's placeholder expands to (module docstring, "Layout in the prompt")."""
        block = VISION_START + VIDEO_PAD * self.tokens_per_group + VISION_END
        return "".join(f"<{t:.1f} seconds>{block}" for t in self.timestamps)

    def model_kwargs(self) -> dict[str, torch.Tensor]:
        """This one video as model kwargs."""
        return collate_video_inputs([self])


def group_timestamps(timestamps: Sequence[float] | np.ndarray | torch.Tensor,
                     temporal_patch_size: int = 2) -> tuple[float, ...]:
    """Frame times -> one time per temporal group: the mean of the group's first and last frame, the last
    frame repeated to fill the final group (Qwen3VLProcessor._calculate_timestamps)."""
    values = [float(t) for t in np.asarray(timestamps.cpu() if isinstance(timestamps, torch.Tensor)
                                           else timestamps, dtype=np.float64).reshape(-1)]
    if not values:
        raise ValueError("no timestamps")
    values += [values[-1]] * (-len(values) % temporal_patch_size)
    return tuple((values[i] + values[i + temporal_patch_size - 1]) / 2
                 for i in range(0, len(values), temporal_patch_size))


def preprocess_video(frames: torch.Tensor | np.ndarray,
                     timestamps: Sequence[float] | np.ndarray | torch.Tensor,
                     config: Qwen3VLVideoConfig | None = None) -> Qwen3VLVideoInputs:
    """Frames uint8 (T, H, W, 3) RGB and their timestamps (T,) in seconds -> `Qwen3VLVideoInputs`.

    Refuses more than `config.max_frames` frames and fewer than the temporal patch size (2): sampling is
    the reader's job (`Qwen3VLVideoConfig.sample_indices` gives the processor's choice).
    """
    config = config or Qwen3VLVideoConfig()
    video = _as_uint8_video(frames).permute(0, 3, 1, 2).contiguous()  # (T, 3, H, W)
    num_frames, _, height, width = video.shape
    if num_frames > config.max_frames:
        raise ValueError(f"{num_frames} frames exceed max_frames={config.max_frames}; sample fewer")
    if len(timestamps) != num_frames:
        raise ValueError(f"{num_frames} frames but {len(timestamps)} timestamps")
    h, w = config.resized_size(height, width, num_frames)
    if (h, w) != (height, width):  # uint8 in, uint8 out: torchvision's CPU resize (stack.md §3)
        video = F.interpolate(video, size=(h, w), mode="bicubic", antialias=True, align_corners=False)
    pixel_values, (grid_t, grid_h, grid_w) = patchify(normalize_frames(video, config), config)  # (N, 1536)
    return Qwen3VLVideoInputs(
        pixel_values_videos=pixel_values,
        video_grid_thw=torch.tensor([[grid_t, grid_h, grid_w]], dtype=torch.int64),
        timestamps=group_timestamps(timestamps, config.temporal_patch_size),
        num_video_tokens=grid_t * grid_h * grid_w // config.merge_size**2,
        frame_size=(h, w),
        outer_vision_tokens=config.outer_vision_tokens,
    )


def collate_video_inputs(videos: Sequence[Qwen3VLVideoInputs]) -> dict[str, torch.Tensor]:
    """Videos in placeholder order -> pixel_values_videos (sum N_i, 1536), video_grid_thw (V, 3)."""
    if not videos:
        raise ValueError("no videos to collate")
    return {
        "pixel_values_videos": torch.cat([v.pixel_values_videos for v in videos], dim=0),
        "video_grid_thw": torch.cat([v.video_grid_thw.reshape(1, 3) for v in videos], dim=0),
    }


def expand_video_text(text: str, videos: Sequence[Qwen3VLVideoInputs]) -> str:
    """Replace the i-th video placeholder of a rendered prompt with videos[i].prompt_text().

    With outer_vision_tokens=False the placeholder is the chat template's whole
    `<|vision_start|><|video_pad|><|vision_end|>` (a bare <|video_pad|> also counts, as in transformers
    4.57); with True only the <|video_pad|> is replaced (transformers 5.x). Text-level, as the processor
    does it, so the timestamp text tokenises together with its neighbours exactly as there.
    """
    if len({v.outer_vision_tokens for v in videos}) > 1:
        raise ValueError("videos of one prompt must share the outer_vision_tokens layout")
    pattern = re.escape(VIDEO_PAD) if all(v.outer_vision_tokens for v in videos) else (
        f"{re.escape(VIDEO_ITEM)}|{re.escape(VIDEO_PAD)}")
    pieces = re.split(f"({pattern})", text)  # [text, placeholder, text, placeholder, ..., text]
    if (len(pieces) - 1) // 2 != len(videos):
        raise ValueError(f"{(len(pieces) - 1) // 2} video placeholders for {len(videos)} videos")
    for i, video in enumerate(videos):
        pieces[2 * i + 1] = video.prompt_text()
    return "".join(pieces)


def rope_index(input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
               video_grid_thw: torch.Tensor | None, *, video_token_id: int, image_token_id: int,
               vision_start_token_id: int | None = None, spatial_merge_size: int = 2,
               image_grid_thw: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids (B, L) -> (position_ids (3, B, L), rope_deltas (B, 1)) by Qwen3-VL's rule.

    Each video grid row [t, h, w] is split into t rows [1, h, w], one per frame block; each block is then
    placed by the shared block rule of `vt_model.positions.rope_index` (temporal id = start since a block
    has one temporal step, height / width = start + row / column, text after it at the largest id + 1),
    which is exactly Qwen3-VL's (module docstring). Padding and errors as there.
    """
    from vt_model.positions import rope_index as block_rope_index

    frames = None
    if video_grid_thw is not None:
        grids = video_grid_thw.reshape(-1, 3)
        frames = torch.repeat_interleave(grids, grids[:, 0], dim=0)  # (sum t, 3)
        frames[:, 0] = 1
    return block_rope_index(input_ids, attention_mask, frames, None, video_token_id=video_token_id,
                            image_token_id=image_token_id, vision_start_token_id=vision_start_token_id,
                            spatial_merge_size=spatial_merge_size, image_grid_thw=image_grid_thw)


def _get(config: Any, name: str) -> Any:
    return config[name] if isinstance(config, Mapping) else getattr(config, name)


def model_inputs_positions(model_config: Any, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """{"position_ids": (3, B, L)} for a Qwen3-VL forward / generate call.

    model_config: the model's config object or its config.json dict (token ids,
    vision_config.spatial_merge_size). batch: input_ids (B, L), optional attention_mask, video_grid_thw,
    image_grid_thw.
    """
    position_ids, _ = rope_index(
        batch["input_ids"], batch.get("attention_mask"), batch.get("video_grid_thw"),
        video_token_id=_get(model_config, "video_token_id"),
        image_token_id=_get(model_config, "image_token_id"),
        vision_start_token_id=_get(model_config, "vision_start_token_id"),
        spatial_merge_size=_get(_get(model_config, "vision_config"), "spatial_merge_size"),
        image_grid_thw=batch.get("image_grid_thw"),
    )
    return {"position_ids": position_ids}


def vllm_placeholder() -> str:
    """The video placeholder vLLM's Qwen3-VL processor replaces (module docstring, "vLLM"): only
    `<|video_pad|>` when transformers' Qwen3VLProcessor overrides `replace_video_token`, else the whole
    `<|vision_start|><|video_pad|><|vision_end|>` (Qwen3VLMultiModalProcessor._expands_only_video_token)."""
    from transformers import ProcessorMixin
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

    generic = getattr(ProcessorMixin, "replace_video_token", None)
    override = getattr(Qwen3VLProcessor, "replace_video_token", None)
    return VIDEO_PAD if override is not None and override is not generic else VIDEO_ITEM


def vllm_prompt_text(text: str, outer_vision_tokens: bool = False) -> str:
    """A rendered prompt (the chat template's `<|vision_start|><|video_pad|><|vision_end|>` per video)
    as vLLM must get it to expand each video to our layout: vLLM's placeholder, inside the outer
    start / end pair when `outer_vision_tokens`."""
    placeholder = vllm_placeholder()
    if outer_vision_tokens:
        placeholder = VISION_START + placeholder + VISION_END
    return text.replace(VIDEO_ITEM, placeholder)


def vllm_video_metadata(timestamps: Sequence[float] | np.ndarray | torch.Tensor) -> dict[str, Any]:
    """Metadata for pre-sampled frames that makes vLLM's Qwen3-VL processor compute our group times:
    frames_indices / fps with the frames' seconds as indices and fps 1 (module docstring, "vLLM")."""
    seconds = [float(t) for t in np.asarray(timestamps.cpu() if isinstance(timestamps, torch.Tensor)
                                            else timestamps, dtype=np.float64).reshape(-1)]
    return {"fps": 1.0, "duration": float(len(seconds)), "total_num_frames": len(seconds),
            "frames_indices": seconds, "video_backend": "decord"}


_TIMESTAMP_AT_END = re.compile(r"<(\d+(?:\.\d+)?) seconds>$")


def video_span(tokenizer: Any, input_ids: Sequence[int], grid_t: int) -> tuple[int, int, list[float]]:
    """Where our expanded video sits in prompt ids with one video: (start, end) of the part vLLM writes
    for it (first `<t seconds>` token .. last frame block's `<|vision_end|>`, end exclusive; the outer
    start / end pair of the transformers 5.x layout stays outside) and the grid_t times the
    `<t seconds>` texts print. Raises ValueError when the ids do not hold grid_t timestamped blocks."""
    ids = special_ids(tokenizer)
    tokens = [int(t) for t in input_ids]
    starts = [i for i in range(len(tokens) - 1)
              if tokens[i] == ids.vision_start and tokens[i + 1] == ids.video_pad]
    if len(starts) != grid_t:
        raise ValueError(f"the prompt ids hold {len(starts)} frame blocks, the video grid {grid_t}")
    ends = [tokens.index(ids.vision_end, start) for start in starts]
    # each block's timestamp text: the end of the prompt before the first, the ids between blocks later
    texts = [tokenizer.decode(tokens[:starts[0]])]
    texts += [tokenizer.decode(tokens[end + 1:start]) for end, start in zip(ends, starts[1:], strict=False)]
    times = []
    for k, text in enumerate(texts):
        match = _TIMESTAMP_AT_END.search(text)
        if match is None:
            raise ValueError(f"frame block {k} of the prompt ids is not preceded by a <t seconds> text")
        times.append(float(match.group(1)))
    first = tokenize(tokenizer, f"<{times[0]:.1f} seconds>")  # as vLLM tokenises it: on its own
    return starts[0] - len(first), ends[-1] + 1, times


# The Qwen3-VL instruct chat template: the Qwen2.5-VL one (vt_model.offline_tokenizers) without its
# default system turn. That is the one difference the released Qwen3-VL-*-Instruct template shows for
# system / user / assistant turns (tools aside): a system turn only when the messages start with one;
# videos as <|vision_start|><|video_pad|><|vision_end|>; turns closed by <|im_end|>\n; the generation
# prompt <|im_start|>assistant\n (the Thinking variants add "<think>\n" there; not modelled here).
_DEFAULT_SYSTEM_TURN = """    {%- if loop.first and message['role'] != 'system' -%}
        {{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' -}}
    {%- endif -%}
"""
if _DEFAULT_SYSTEM_TURN not in QWEN25_VL_CHAT_TEMPLATE:
    raise RuntimeError("the Qwen2.5-VL chat template changed; update the Qwen3-VL derivation")
QWEN3_VL_CHAT_TEMPLATE = QWEN25_VL_CHAT_TEMPLATE.replace(_DEFAULT_SYSTEM_TURN, "")


class Qwen3VLFamily:
    """Qwen3-VL dense / MoE, and Qwen3.5's video path (see vt_model.families.MODEL_TYPE_FAMILIES)."""

    name = "qwen3_vl"
    model_types = ("qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe")
    # Qwen3VLForConditionalGeneration.forward takes no second_per_grid_ts
    model_input_keys = ("input_ids", "attention_mask", "labels", "mm_token_type_ids", "position_ids",
                        "pixel_values_videos", "video_grid_thw")
    per_video_keys = ("video_grid_thw",)  # pixel rows are per patch, not per video
    chat_template = QWEN3_VL_CHAT_TEMPLATE

    # --- frames ------------------------------------------------------------------------------------
    def video_config(self, **overrides: Any) -> Qwen3VLVideoConfig:
        """Qwen3VLVideoConfig with overrides; a frame count given without fps samples by count."""
        if overrides.get("num_frames") is not None:
            overrides.setdefault("fps", None)
        return Qwen3VLVideoConfig(**overrides)

    def tiny_video_config(self, **overrides: Any) -> Qwen3VLVideoConfig:
        """The tiny model's default: 16 frames (the paper's count) and the fast floor."""
        defaults = {"num_frames": 16, "fps": None, "max_frames": 16, "min_pixels": QWEN3_VL_FAST_MIN_PIXELS}
        return Qwen3VLVideoConfig(**{**defaults, **overrides})

    def video_config_from_pretrained(self, directory: str | os.PathLike[str]) -> Qwen3VLVideoConfig:
        return Qwen3VLVideoConfig.from_pretrained(directory)

    def preprocess_video(self, frames: torch.Tensor | np.ndarray,
                         timestamps: Sequence[float] | np.ndarray | torch.Tensor,
                         config: Qwen3VLVideoConfig | None = None) -> Qwen3VLVideoInputs:
        return preprocess_video(frames, timestamps, config)

    # --- prompt layout -----------------------------------------------------------------------------
    def encode_video_prompt(self, tokenizer: Any, text: str,
                            videos: Sequence[Qwen3VLVideoInputs]) -> list[int]:
        """Expand every video placeholder of the rendered prompt in the text, then tokenise it."""
        return tokenize(tokenizer, expand_video_text(text, videos))

    def collate_videos(self, videos: Sequence[Qwen3VLVideoInputs]) -> dict[str, torch.Tensor]:
        return collate_video_inputs(videos)

    def position_ids(self, model_config: Any, batch: Mapping[str, Any]) -> torch.Tensor:
        return model_inputs_positions(model_config, batch)["position_ids"]

    def video_features(self, model: Any, pixel_values_videos: torch.Tensor,
                       video_grid_thw: torch.Tensor) -> list[torch.Tensor]:
        """The vision tower once: one (n_tokens_i, hidden * (1 + D)) tensor per video, the merged features
        followed by the D DeepStack mergers' (each (n_tokens_i, hidden)), so that callers keep one tensor
        per video (`video_encoder_outputs` splits them again)."""
        out = model.get_video_features(pixel_values_videos, video_grid_thw, return_dict=True)
        deepstack = out.deepstack_features or []  # D layers of per-video tuples
        return [torch.cat([merged, *(layer[i] for layer in deepstack)], dim=-1)
                for i, merged in enumerate(out.pooler_output)]

    def video_encoder_outputs(self, model_config: Any, features: Sequence[torch.Tensor]) -> dict[str, Any]:
        """Packed per-row video features (`video_features`) -> the forward's `mm_encoder_outputs` kwarg."""
        from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures

        # Qwen3.5's vision config has no DeepStack layers (and no such key)
        parts = 1 + len(getattr(model_config.vision_config, "deepstack_visual_indexes", None) or ())
        split = [f.chunk(parts, dim=-1) for f in features]  # per row: merged, then D DeepStack tensors
        return {"video": BaseModelOutputWithDeepstackFeatures(
            pooler_output=[s[0] for s in split],
            deepstack_features=[tuple(s[k] for s in split) for k in range(1, parts)])}

    # --- vLLM (vt_model.engines.vllm; module docstring, "vLLM") ---------------------------------------
    def vllm_frames_request(self, text: str, frames: Any, timestamps: Sequence[float],
                            config: Qwen3VLVideoConfig | None = None) -> dict[str, Any]:
        """A vLLM request for decoded uint8 frames (T, H, W, 3): the rendered prompt with vLLM's
        placeholder (`vllm_prompt_text`) and the frames with `vllm_video_metadata`."""
        outer = (config or Qwen3VLVideoConfig()).outer_vision_tokens
        return {"prompt": vllm_prompt_text(text, outer),
                "multi_modal_data": {"video": (frames, vllm_video_metadata(timestamps))}}

    def vllm_embeds_request(self, tokenizer: Any, prompt: Mapping[str, Any], features: torch.Tensor
                            ) -> dict[str, Any]:
        """A vLLM request carrying our own features of the prompt's video (an `encode_prompt` output):
        its ids with the video's blocks replaced by vLLM's placeholder (`video_span`), `video_embeds`
        (n_tokens, hidden * (1 + D), `video_features`' packing), the grid (1, 3) and the timestamps."""
        grid = prompt["video_grid_thw"].reshape(1, 3)
        input_ids = [int(t) for t in prompt["input_ids"].tolist()]
        start, end, times = video_span(tokenizer, input_ids, int(grid[0, 0]))
        placeholder = [special_ids(tokenizer).video_pad] if vllm_placeholder() == VIDEO_PAD else \
            tokenize(tokenizer, VIDEO_ITEM)
        return {"prompt_token_ids": input_ids[:start] + placeholder + input_ids[end:],
                "multi_modal_data": {"video": {"video_embeds": features, "video_grid_thw": grid,
                                               "timestamps": [times]}}}

    def vllm_position_mismatch(self, model_config: Any, prompt: Mapping[str, Any]) -> str | None:
        """Never: Qwen3-VL's ids carry no timing, so equal prompt ids give vLLM our positions."""
        return None

    # --- building a model directory ----------------------------------------------------------------
    def prepare_tokenizer(self, tokenizer: Any) -> Any:
        """Give an offline Qwen2.5 tokenizer (vt_model.offline_tokenizers) the Qwen3 additions: the four
        added tokens the Qwen3 vocabulary has after Qwen2.5's specials and this family's chat template."""
        missing = [t for t in QWEN3_ADDED_TOKENS if t not in tokenizer.get_vocab()]
        if missing:
            tokenizer.add_tokens(missing, special_tokens=False)
        tokenizer.chat_template = QWEN3_VL_CHAT_TEMPLATE
        return tokenizer

    def tiny_corpus(self) -> list[str]:
        """Timestamp text for the tiny tokenizer's corpus (twice: the BPE's min frequency is 2)."""
        return [f"<{k / 2:.1f} seconds>" for k in range(64)] * 2

    def tiny_config(self, tokenizer: Any | None = None, **sizes: Any) -> Any:
        from vt_model.model_configs import qwen3vl_tiny_config

        return qwen3vl_tiny_config(tokenizer, **sizes)

    def model_class(self) -> type:
        from vt_model.loading import model_class

        return model_class("qwen3_vl")


FAMILY = Qwen3VLFamily()
