"""Qwen2-VL / Qwen2.5-VL video preprocessing in plain torch (no torchvision), plus the small
token-level helpers every batch needs (placeholder expansion, `mm_token_type_ids`).

transformers' `Qwen2VLVideoProcessor` requires torchvision, which cannot be installed next to the CPU
torch this project pins (shared/docs/stack.md §1, §3). This module re-implements its algorithm step by
step as stack.md §3 specifies; against the real processor (run once with an import shim) the pixels
matched to ~2e-7 and grids / token counts exactly.

Pipeline for one video of T RGB uint8 frames (H, W):
  smart_resize -> uint8 bicubic antialiased resize -> rescale + CLIP normalise (fused, as transformers
  does) -> pad T to a multiple of `temporal_patch_size` by repeating the last frame -> patchify into
  rows of 3 * 2 * 14 * 14 = 1176 values, ordered so that each run of merge_size**2 = 4 consecutive rows is
  one 2x2 merge window (the vision merger fuses those 4 rows into one LM token).

Frame *sampling* (which frames, how many) is not done here: `vt_data.video.read_video` returns the
frames and their timestamps; the sampling settings in `VideoProcessorConfig` (num_frames, max_frames,
fps) describe what the reader should be asked for and are saved next to a model so that a model
directory describes its own preprocessing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

# OpenAI CLIP statistics (transformers' OPENAI_CLIP_MEAN / OPENAI_CLIP_STD), per RGB channel.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Qwen's own video default (transformers' Qwen2VLVideoProcessor `size.shortest_edge`, and qwen-vl-utils'
# VIDEO_MIN_PIXELS, which Video-R1 / Video-Thinker call through `fetch_video`).
QWEN_VIDEO_MIN_PIXELS = 128 * 28 * 28
# The paper's per-frame budget (16 frames at most 128*28*28 pixels each, method.md §3).
PAPER_MAX_PIXELS = 128 * 28 * 28
# A small floor for fast CPU tests: it keeps e.g. 56x56 synthetic clips at their size (stack.md §6).
FAST_MIN_PIXELS = 4 * 28 * 28

VIDEO_PREPROCESSOR_FILE = "video_preprocessor_config.json"
IMAGE_PREPROCESSOR_FILE = "preprocessor_config.json"


def smart_resize(
    height: int,
    width: int,
    factor: int = 28,
    min_pixels: int = QWEN_VIDEO_MIN_PIXELS,
    max_pixels: int = PAPER_MAX_PIXELS,
) -> tuple[int, int]:
    """The (height, width) Qwen resizes a frame to: both multiples of `factor`, area within
    [min_pixels, max_pixels] where possible, aspect ratio kept as closely as the rounding allows.

    Same arithmetic as transformers' / qwen-vl-utils' `smart_resize`: Python's `round` (half to even) to
    the nearest multiple first; only if that area is too large are both sides scaled down and floored,
    *else* if it is too small both are scaled up and ceiled (the two checks are exclusive, so a
    downscaled frame may end slightly below min_pixels, as in the reference). Sides are at least
    `factor` (qwen-vl-utils' clamp; transformers' copy agrees for any side >= factor / 2).
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"frame size must be positive, got {height}x{width}")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"absolute aspect ratio must be at most 200, got {height}x{width}")
    if min_pixels > max_pixels:
        raise ValueError(f"min_pixels ({min_pixels}) > max_pixels ({max_pixels})")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


@dataclass
class VideoProcessorConfig:
    """Settings of the Qwen video preprocessing (and of the frame sampling the reader is asked for).

    Defaults are the paper's: 16 frames, at most 128*28*28 pixels per frame. `min_pixels` defaults to
    Qwen's own video floor (128*28*28, what Video-R1 / Video-Thinker get from qwen-vl-utils); with
    min == max a large frame is shrunk to just under the budget and a small one is *upscaled* to about
    it (a 56x56 clip becomes 336x336). Fast tests and the tiny demo use `FAST_MIN_PIXELS` instead.
    """

    # the vt_model.families family this preprocessing belongs to (how a config names its family)
    family: ClassVar[str] = "qwen2_5_vl"

    num_frames: int | None = 16  # frames to sample uniformly; mutually exclusive with fps
    max_frames: int = 16  # hard cap on frames per video (preprocess_video refuses more)
    fps: float | None = None  # sample this many frames per second instead of num_frames
    min_pixels: int = QWEN_VIDEO_MIN_PIXELS
    max_pixels: int = PAPER_MAX_PIXELS
    patch_size: int = 14
    merge_size: int = 2
    temporal_patch_size: int = 2
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD

    def __post_init__(self) -> None:
        self.image_mean = tuple(float(x) for x in self.image_mean)
        self.image_std = tuple(float(x) for x in self.image_std)
        if self.num_frames is not None and self.fps is not None:
            raise ValueError(
                "num_frames and fps are mutually exclusive; set num_frames=None to sample by fps"
            )
        if self.num_frames is None and self.fps is None:
            raise ValueError("set one of num_frames or fps")
        if self.num_frames is not None and not 1 <= self.num_frames <= self.max_frames:
            raise ValueError(f"num_frames={self.num_frames} must be in [1, max_frames={self.max_frames}]")
        if self.fps is not None and self.fps <= 0:
            raise ValueError(f"fps must be positive, got {self.fps}")
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ValueError(f"need 0 < min_pixels <= max_pixels, got {self.min_pixels}, {self.max_pixels}")
        if len(self.image_mean) != 3 or len(self.image_std) != 3:
            raise ValueError("image_mean and image_std need one value per RGB channel")
        for name in ("patch_size", "merge_size", "temporal_patch_size", "max_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")

    @property
    def factor(self) -> int:
        """Spatial rounding unit: one merged token covers factor x factor pixels (14 * 2 = 28)."""
        return self.patch_size * self.merge_size

    @property
    def patch_dim(self) -> int:
        """Values per patch row: channels * temporal_patch_size * patch_size**2 (3 * 2 * 14 * 14 = 1176)."""
        return 3 * self.temporal_patch_size * self.patch_size**2

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        return smart_resize(height, width, self.factor, self.min_pixels, self.max_pixels)

    def grid_thw(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        """The `video_grid_thw` row for `num_frames` source frames of size height x width."""
        h, w = self.resized_size(height, width)
        grid_t = -(-num_frames // self.temporal_patch_size)  # ceil: the time axis is padded up
        return grid_t, h // self.patch_size, w // self.patch_size

    def num_video_tokens(self, num_frames: int, height: int, width: int) -> int:
        """LM tokens one video costs: grid_t * grid_h * grid_w / merge_size**2."""
        t, h, w = self.grid_thw(num_frames, height, width)
        return t * h * w // self.merge_size**2

    # --- a model directory describes its own preprocessing -------------------------------------

    def to_hf_dict(self, processor_type: str = "Qwen2VLVideoProcessor") -> dict[str, Any]:
        """The keys transformers' Qwen2-VL video/image processors read, plus ours (num_frames...)."""
        return {
            f"{'video' if 'Video' in processor_type else 'image'}_processor_type": processor_type,
            "processor_class": "Qwen2_5_VLProcessor",
            "do_resize": True,
            "resample": 3,  # PIL bicubic, the only interpolation this module implements
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "do_convert_rgb": True,
            "size": {"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels},
            "min_pixels": self.min_pixels,
            "max_pixels": self.max_pixels,
            "patch_size": self.patch_size,
            "merge_size": self.merge_size,
            "temporal_patch_size": self.temporal_patch_size,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "num_frames": self.num_frames,
            "max_frames": self.max_frames,
            "fps": self.fps,
            "do_sample_frames": False,  # frames arrive sampled (vt_data.video)
        }

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> VideoProcessorConfig:
        """Read our keys back, falling back to transformers' `size` dict and Qwen's video defaults."""
        size = d.get("size") or {}
        defaults = cls()
        num_frames = d.get("num_frames", defaults.num_frames)
        fps = d.get("fps")
        if fps is not None and "num_frames" not in d:
            num_frames = None
        return cls(
            num_frames=num_frames,
            max_frames=d.get("max_frames", max(defaults.max_frames, num_frames or 0)),
            fps=fps,
            min_pixels=d.get("min_pixels", size.get("shortest_edge", defaults.min_pixels)),
            max_pixels=d.get("max_pixels", size.get("longest_edge", defaults.max_pixels)),
            patch_size=d.get("patch_size", defaults.patch_size),
            merge_size=d.get("merge_size", defaults.merge_size),
            temporal_patch_size=d.get("temporal_patch_size", defaults.temporal_patch_size),
            image_mean=tuple(d.get("image_mean", defaults.image_mean)),
            image_std=tuple(d.get("image_std", defaults.image_std)),
        )

    def save_pretrained(self, directory: str | Path) -> None:
        """Write video_preprocessor_config.json and preprocessor_config.json (image processor keys,
        same pixel budget) so the model directory carries its preprocessing."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name, kind in ((VIDEO_PREPROCESSOR_FILE, "Qwen2VLVideoProcessor"),
                           (IMAGE_PREPROCESSOR_FILE, "Qwen2VLImageProcessor")):
            (directory / name).write_text(json.dumps(self.to_hf_dict(kind), indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> VideoProcessorConfig:
        """Read a model directory's video_preprocessor_config.json.

        Without one (older checkpoints ship only the image processor's preprocessor_config.json) the
        patch geometry and normalisation come from preprocessor_config.json, but frames and pixel
        budgets stay at our video defaults: the image processor's budget (e.g. 56*56..28*28*1280) is
        not a video budget.
        """
        directory = Path(directory)
        if (directory / VIDEO_PREPROCESSOR_FILE).is_file():
            return cls.from_hf_dict(json.loads((directory / VIDEO_PREPROCESSOR_FILE).read_text()))
        if (directory / IMAGE_PREPROCESSOR_FILE).is_file():
            image = json.loads((directory / IMAGE_PREPROCESSOR_FILE).read_text())
            geometry = ("patch_size", "merge_size", "temporal_patch_size", "image_mean", "image_std")
            return cls.from_hf_dict({k: image[k] for k in geometry if k in image})
        raise FileNotFoundError(f"no {VIDEO_PREPROCESSOR_FILE} or {IMAGE_PREPROCESSOR_FILE} in {directory}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class VideoInputs:
    """One preprocessed video, ready for Qwen2_5_VLForConditionalGeneration.

    pixel_values_videos: float32 (grid_t * grid_h * grid_w, 1176), rows in merge-window order.
    video_grid_thw:      int64 (1, 3) = [[grid_t, grid_h, grid_w]] in patches (before the 2x2 merge).
    second_per_grid_ts:  seconds one temporal grid step covers (see `seconds_per_grid_step`).
    num_video_tokens:    LM tokens (copies of <|video_pad|>) this video needs.
    frame_size:          (height, width) after smart_resize.
    """

    family: ClassVar[str] = "qwen2_5_vl"  # the vt_model.families family that encodes these inputs

    pixel_values_videos: torch.Tensor
    video_grid_thw: torch.Tensor
    second_per_grid_ts: float
    num_video_tokens: int
    frame_size: tuple[int, int] = field(default=(0, 0))

    def model_kwargs(self) -> dict[str, torch.Tensor]:
        """This one video as model kwargs (second_per_grid_ts a float32 (1,) tensor, as the HF processor)."""
        return collate_video_inputs([self])


def seconds_per_grid_step(timestamps: Sequence[float] | np.ndarray | torch.Tensor,
                          temporal_patch_size: int = 2) -> float:
    """`second_per_grid_ts`: temporal_patch_size x the mean interval between consecutive frames.

    The mean interval is (t_last - t_first) / (T - 1), which for uniformly sampled frames is exactly
    stride / fps (8 frames out of a 64-frame 30 fps clip: stride 9, 2 * 9/30 = 0.6 s; stack.md §3).
    For non-uniform timestamps the model can only take one number per video, so the temporal M-RoPE
    ids are spaced as if the frames were uniform over the same span; the actual spacing is lost.
    (qwen-vl-utils instead uses T / duration as the sampling rate, i.e. interval = duration / T, which
    is slightly smaller than ours for uniform sampling; we follow the stride rule of stack.md.)
    With one frame there is a single temporal step whose id does not depend on this value; 1.0 * the
    temporal patch size is returned. Timestamps must not decrease.
    """
    ts = torch.as_tensor(np.asarray(timestamps, dtype=np.float64) if not isinstance(timestamps, torch.Tensor)
                         else timestamps.double())
    if ts.ndim != 1 or ts.numel() == 0:
        raise ValueError(f"timestamps must be a non-empty 1-D sequence, got shape {tuple(ts.shape)}")
    if ts.numel() == 1:
        return float(temporal_patch_size)
    if bool((ts[1:] < ts[:-1]).any()):
        raise ValueError(f"timestamps must be non-decreasing, got {ts.tolist()}")
    mean_interval = float(ts[-1] - ts[0]) / (ts.numel() - 1)
    return temporal_patch_size * mean_interval


def _as_uint8_video(frames: torch.Tensor | np.ndarray) -> torch.Tensor:
    video = torch.from_numpy(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
    if not isinstance(video, torch.Tensor):
        raise TypeError(f"frames must be a torch tensor or numpy array, got {type(frames).__name__}")
    if video.dtype != torch.uint8:
        raise TypeError(f"frames must be uint8 RGB, got {video.dtype}")
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3), got {tuple(video.shape)}")
    if video.shape[0] == 0:
        raise ValueError("no frames")
    return video


def resize_frames(frames: torch.Tensor | np.ndarray, config: VideoProcessorConfig) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> uint8 (T, 3, h, w) at the smart_resize size.

    The resize runs on the uint8 tensor (bicubic, antialias, align_corners=False), as torchvision does on
    CPU; resizing in float and rounding afterwards differs by up to 0.16 after normalisation (stack.md §3).
    """
    video = _as_uint8_video(frames).permute(0, 3, 1, 2).contiguous()  # (T, 3, H, W)
    height, width = video.shape[-2:]
    h, w = config.resized_size(int(height), int(width))
    if (h, w) != (height, width):
        video = F.interpolate(video, size=(h, w), mode="bicubic", antialias=True, align_corners=False)
    return video


def normalize_frames(video: torch.Tensor, config: VideoProcessorConfig) -> torch.Tensor:
    """uint8 (T, 3, h, w) -> float32 (T, 3, h, w): rescale by 1/255 and CLIP-normalise.

    Fused as transformers does it ((x - 255 * mean) / (255 * std) in float32), which agrees with
    x / 255 followed by (x - mean) / std to within float32 rounding.
    """
    mean = torch.tensor(config.image_mean, dtype=torch.float32) * (1.0 / (1 / 255))  # (3,)
    std = torch.tensor(config.image_std, dtype=torch.float32) * (1.0 / (1 / 255))  # (3,)
    return (video.to(torch.float32) - mean[:, None, None]) / std[:, None, None]


def patchify(video: torch.Tensor, config: VideoProcessorConfig) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """float (T, C, h, w) -> ((grid_t * grid_h * grid_w, C * tps * p * p), (grid_t, grid_h, grid_w)).

    T is padded to a multiple of the temporal patch size by repeating the last frame. Rows run over
    time groups, then merge windows in raster order, then the merge**2 patches inside a window in
    raster order; within a row: channel, frame in the temporal pair, pixel row, pixel column.
    """
    p, m, tps = config.patch_size, config.merge_size, config.temporal_patch_size
    if pad := -video.shape[0] % tps:
        video = torch.cat([video, video[-1:].expand(pad, -1, -1, -1)], dim=0)
    num_frames, channels, h, w = video.shape
    if h % (p * m) or w % (p * m):
        raise ValueError(f"frame size {h}x{w} is not a multiple of patch*merge={p * m}")
    grid_t, grid_h, grid_w = num_frames // tps, h // p, w // p
    # (grid_t, tps, C, grid_h/m, m, p, grid_w/m, m, p): time = (group, frame in pair); each spatial axis
    # = (merge window, patch in window, pixel in patch).
    patches = video.reshape(grid_t, tps, channels, grid_h // m, m, p, grid_w // m, m, p)
    # -> (grid_t, win_row, win_col, patch_row, patch_col, C, tps, pix_row, pix_col)
    patches = patches.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    flat = patches.reshape(grid_t * grid_h * grid_w, channels * tps * p * p)
    return flat, (grid_t, grid_h, grid_w)


def unpatchify(pixel_values: torch.Tensor, grid_thw: Sequence[int] | torch.Tensor,
               config: VideoProcessorConfig) -> torch.Tensor:
    """Inverse of `patchify`: (N, C * tps * p * p) -> (grid_t * tps, C, grid_h * p, grid_w * p).

    For inspection and debugging (e.g. to look at what the model sees); the padded frames come back too.
    """
    p, m, tps = config.patch_size, config.merge_size, config.temporal_patch_size
    grid_t, grid_h, grid_w = (int(x) for x in grid_thw)
    channels = pixel_values.shape[1] // (tps * p * p)
    x = pixel_values.reshape(grid_t, grid_h // m, grid_w // m, m, m, channels, tps, p, p)
    # -> (grid_t, tps, C, win_row, patch_row, pix_row, win_col, patch_col, pix_col)
    x = x.permute(0, 6, 5, 1, 3, 7, 2, 4, 8)
    return x.reshape(grid_t * tps, channels, grid_h * p, grid_w * p)


def preprocess_video(
    frames: torch.Tensor | np.ndarray,
    timestamps: Sequence[float] | np.ndarray | torch.Tensor,
    config: VideoProcessorConfig | None = None,
) -> VideoInputs:
    """Frames uint8 (T, H, W, 3) RGB and their timestamps (T,) in seconds -> `VideoInputs`.

    Refuses more than `config.max_frames` frames (sampling is the reader's job, not ours).
    """
    config = config or VideoProcessorConfig()
    video = _as_uint8_video(frames)
    num_frames = video.shape[0]
    if num_frames > config.max_frames:
        raise ValueError(f"{num_frames} frames exceed max_frames={config.max_frames}; sample fewer")
    if len(timestamps) != num_frames:
        raise ValueError(f"{num_frames} frames but {len(timestamps)} timestamps")
    second_per_grid_ts = seconds_per_grid_step(timestamps, config.temporal_patch_size)

    resized = resize_frames(video, config)  # uint8 (T, 3, h, w)
    normalized = normalize_frames(resized, config)  # float32 (T, 3, h, w)
    pixel_values, (grid_t, grid_h, grid_w) = patchify(normalized, config)  # (N, 1176)
    return VideoInputs(
        pixel_values_videos=pixel_values,
        video_grid_thw=torch.tensor([[grid_t, grid_h, grid_w]], dtype=torch.int64),
        second_per_grid_ts=second_per_grid_ts,
        num_video_tokens=grid_t * grid_h * grid_w // config.merge_size**2,
        frame_size=(int(resized.shape[-2]), int(resized.shape[-1])),
    )


def collate_video_inputs(videos: Sequence[VideoInputs]) -> dict[str, torch.Tensor]:
    """Several videos (in the order their placeholders appear in the batch) -> model kwargs:
    pixel_values_videos (sum N_i, 1176) row-concatenated, video_grid_thw (V, 3), second_per_grid_ts (V,)."""
    if not videos:
        raise ValueError("no videos to collate")
    return {
        "pixel_values_videos": torch.cat([v.pixel_values_videos for v in videos], dim=0),
        "video_grid_thw": torch.cat([v.video_grid_thw for v in videos], dim=0),
        "second_per_grid_ts": torch.tensor([v.second_per_grid_ts for v in videos], dtype=torch.float32),
    }


def expand_video_tokens(input_ids: Sequence[int], video_token_id: int, counts: Sequence[int]) -> list[int]:
    """Replace the i-th single `<|video_pad|>` id with counts[i] copies (videos in order).

    The chat template emits one placeholder per video; the model needs one per video token.
    """
    out: list[int] = []
    it = iter(counts)
    used = 0
    for token in input_ids:
        if token == video_token_id:
            try:
                n = next(it)
            except StopIteration:
                raise ValueError(f"more video placeholders than videos ({len(counts)})") from None
            out.extend([video_token_id] * int(n))
            used += 1
        else:
            out.append(int(token))
    if used != len(counts):
        raise ValueError(f"{used} video placeholders for {len(counts)} videos")
    return out


def mm_token_type_ids(input_ids: torch.Tensor, *, image_token_id: int, video_token_id: int) -> torch.Tensor:
    """(B, L) ids -> (B, L) int64 types: 0 text, 1 image, 2 video.

    transformers 5.x builds 3-D M-RoPE positions only when this is passed (stack.md §3); without it the
    vision tokens silently get 1-D text positions.
    """
    return (input_ids == image_token_id).long() + 2 * (input_ids == video_token_id).long()
