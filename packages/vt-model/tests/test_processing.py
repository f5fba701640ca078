"""The torch-only Qwen video preprocessing: smart_resize, patch order (checked by an independent loop),
timing, the real-video golden values, token helpers, and (where torchvision exists) parity with
transformers' own Qwen2VLVideoProcessor."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vt_model.processing import (
    CLIP_MEAN,
    CLIP_STD,
    FAST_MIN_PIXELS,
    PAPER_MAX_PIXELS,
    QWEN_VIDEO_MIN_PIXELS,
    VideoProcessorConfig,
    collate_video_inputs,
    expand_video_tokens,
    mm_token_type_ids,
    preprocess_video,
    seconds_per_grid_step,
    smart_resize,
    unpatchify,
)

# Real test videos in the repository (tests/data/README.md).
EXTERNAL = Path(__file__).resolve().parents[3] / "tests" / "data"
PANCAKE = EXTERNAL / "decord" / "examples" / "flipping_a_pancake.mkv"

# ------------------------------------------------------------------------------------ smart_resize


@pytest.mark.parametrize(
    ("h", "w", "min_pixels", "max_pixels", "expected"),
    [
        (128, 128, 128 * 28 * 28, 768 * 28 * 28, (336, 336)),  # stack.md §3: upscaled to the floor
        (336, 336, 128 * 28 * 28, 768 * 28 * 28, (336, 336)),  # already valid: unchanged
        (360, 640, QWEN_VIDEO_MIN_PIXELS, PAPER_MAX_PIXELS, (224, 420)),  # 16:9 at the paper budget
        (1080, 1920, QWEN_VIDEO_MIN_PIXELS, PAPER_MAX_PIXELS, (224, 420)),
        (240, 426, QWEN_VIDEO_MIN_PIXELS, PAPER_MAX_PIXELS, (224, 420)),  # the pancake clip
        (56, 56, FAST_MIN_PIXELS, PAPER_MAX_PIXELS, (56, 56)),  # synthetic clips stay small
        (56, 56, QWEN_VIDEO_MIN_PIXELS, PAPER_MAX_PIXELS, (336, 336)),  # ...unless the Qwen floor applies
        (10, 10, FAST_MIN_PIXELS, PAPER_MAX_PIXELS, (56, 56)),
        # round half to even: 42/28 = 1.5 -> 2 and 70/28 = 2.5 -> 2
        (42, 70, 28 * 28, PAPER_MAX_PIXELS, (56, 56)),
    ],
)
def test_smart_resize_examples(h, w, min_pixels, max_pixels, expected):
    assert smart_resize(h, w, 28, min_pixels, max_pixels) == expected


def test_smart_resize_bounds_and_errors():
    for h, w in [(100, 700), (720, 1280), (17, 3000), (2000, 2000), (29, 29)]:
        rh, rw = smart_resize(h, w, 28, FAST_MIN_PIXELS, PAPER_MAX_PIXELS)
        assert rh % 28 == 0 and rw % 28 == 0 and rh >= 28 and rw >= 28
        assert rh * rw <= PAPER_MAX_PIXELS
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(10, 2100)
    with pytest.raises(ValueError, match="positive"):
        smart_resize(0, 10)


# ------------------------------------------------------------------------------------ patch order


def _reference_patches(frames_norm: torch.Tensor, p: int = 14, m: int = 2, tps: int = 2) -> torch.Tensor:
    """The documented row order, written as explicit loops (no view/permute) for an independent check.

    Row r <-> (time group g, window row a, window col b, patch row i, patch col j), r counting in that
    order; its values: channel, frame in pair, pixel row, pixel col of patch (a*m+i, b*m+j).
    """
    t, c, h, w = frames_norm.shape
    if t % tps:
        frames_norm = torch.cat([frames_norm, frames_norm[-1:].expand(tps - t % tps, -1, -1, -1)])
    gt, gh, gw = frames_norm.shape[0] // tps, h // p, w // p
    rows = []
    for g in range(gt):
        for a in range(gh // m):
            for b in range(gw // m):
                for i in range(m):
                    for j in range(m):
                        y, x = (a * m + i) * p, (b * m + j) * p
                        # (tps, c, p, p)
                        block = frames_norm[g * tps : (g + 1) * tps, :, y : y + p, x : x + p]
                        rows.append(block.permute(1, 0, 2, 3).reshape(-1))  # channel, frame, row, col
    return torch.stack(rows)


def _reference_resize_normalize(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float (T, 3, h, w): uint8 bicubic antialias resize, /255, CLIP normalise."""
    x = frames.permute(0, 3, 1, 2)
    if tuple(x.shape[-2:]) != size:
        x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)
    assert x.dtype == torch.uint8
    x = x.float() / 255.0
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def test_eight_frames_at_336_make_grid_4_24_24():
    """stack.md §3 example: 8 frames of a 128x128 clip with min 128*28*28 -> 336x336, [4, 24, 24]."""
    config = VideoProcessorConfig(num_frames=8, max_frames=8, min_pixels=128 * 28 * 28,
                                  max_pixels=768 * 28 * 28)
    gen = torch.Generator().manual_seed(1)
    frames = torch.randint(0, 256, (8, 128, 128, 3), dtype=torch.uint8, generator=gen)
    out = preprocess_video(frames, [i * 9 / 30 for i in range(8)], config)
    assert out.frame_size == (336, 336)
    assert out.video_grid_thw.tolist() == [[4, 24, 24]] and out.video_grid_thw.dtype == torch.int64
    assert out.pixel_values_videos.shape == (2304, 1176) and out.pixel_values_videos.dtype == torch.float32
    assert out.num_video_tokens == 576 == config.num_video_tokens(8, 128, 128)
    assert out.second_per_grid_ts == pytest.approx(0.6)  # stride 9 at 30 fps, x2


@pytest.mark.parametrize("num_frames", [4, 5])  # 5: the time axis is padded with the last frame
def test_patch_rows_match_an_independent_loop(num_frames):
    config = VideoProcessorConfig(num_frames=num_frames, min_pixels=FAST_MIN_PIXELS,
                                  max_pixels=PAPER_MAX_PIXELS)
    gen = torch.Generator().manual_seed(num_frames)
    frames = torch.randint(0, 256, (num_frames, 60, 100, 3), dtype=torch.uint8, generator=gen)
    out = preprocess_video(frames, list(range(num_frames)), config)
    h, w = out.frame_size
    assert (h, w) == smart_resize(60, 100, 28, FAST_MIN_PIXELS, PAPER_MAX_PIXELS) == (56, 112)
    expected = _reference_patches(_reference_resize_normalize(frames, (h, w)))
    # fused (x - 255 mean) / (255 std) vs x/255 then normalise: equal up to float32 rounding
    torch.testing.assert_close(out.pixel_values_videos, expected, rtol=0, atol=2e-6)
    grid_t = math.ceil(num_frames / 2)
    assert out.video_grid_thw.tolist() == [[grid_t, h // 14, w // 14]]
    assert out.num_video_tokens == grid_t * (h // 28) * (w // 28)

    # the inverse permutation recovers the (padded) resized, normalised frames exactly
    restored = unpatchify(out.pixel_values_videos, out.video_grid_thw[0], config)
    reference = _reference_resize_normalize(frames, (h, w))
    torch.testing.assert_close(restored[:num_frames], reference, rtol=0, atol=2e-6)
    if num_frames % 2:
        torch.testing.assert_close(restored[num_frames], reference[-1], rtol=0, atol=2e-6)


def test_each_merge_window_is_four_consecutive_rows():
    """Rows 4k..4k+3 are the 2x2 patches of one 28x28 window: mark each window with its own colour."""
    config = VideoProcessorConfig(num_frames=2, min_pixels=FAST_MIN_PIXELS)
    frames = torch.zeros(2, 56, 84, 3, dtype=torch.uint8)
    for k, (y, x) in enumerate((y, x) for y in range(0, 56, 28) for x in range(0, 84, 28)):
        frames[:, y : y + 28, x : x + 28] = 10 * (k + 1)
    out = preprocess_video(frames, [0.0, 0.5], config)
    red = out.pixel_values_videos.view(-1, 3, 2, 14, 14)[:, 0]  # (rows, frame, 14, 14) red channel
    values = [round(float(v) * CLIP_STD[0] * 255 + CLIP_MEAN[0] * 255) for v in red[:, 0, 0, 0]]
    window_of_row = [v // 10 - 1 for v in values]
    assert window_of_row == [k for k in range(6) for _ in range(4)]  # raster windows, 4 rows each


def test_numpy_and_torch_inputs_agree_and_bad_inputs_fail():
    frames = np.random.default_rng(0).integers(0, 256, (2, 56, 56, 3), dtype=np.uint8)
    config = VideoProcessorConfig(num_frames=2, min_pixels=FAST_MIN_PIXELS)
    a = preprocess_video(frames, np.array([0.0, 1.0]), config)
    b = preprocess_video(torch.from_numpy(frames), torch.tensor([0.0, 1.0]), config)
    assert torch.equal(a.pixel_values_videos, b.pixel_values_videos)
    with pytest.raises(TypeError, match="uint8"):
        preprocess_video(frames.astype(np.float32), [0.0, 1.0], config)
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        preprocess_video(frames[..., :2], [0.0, 1.0], config)
    with pytest.raises(ValueError, match="timestamps"):
        preprocess_video(frames, [0.0], config)
    with pytest.raises(ValueError, match="max_frames"):
        preprocess_video(np.zeros((17, 28, 28, 3), np.uint8), list(range(17)), VideoProcessorConfig())


# ------------------------------------------------------------------------------------ timing


def test_seconds_per_grid_step():
    assert seconds_per_grid_step([i * 9 / 30 for i in range(8)]) == pytest.approx(0.6)
    assert seconds_per_grid_step([0.5, 1.5, 2.5, 3.5]) == pytest.approx(2.0)  # learnability.md: 1 fps
    # non-uniform: the mean interval over the span, (3.0 - 0.0) / 3 = 1.0 s, times 2
    assert seconds_per_grid_step([0.0, 0.2, 0.4, 3.0]) == pytest.approx(2.0)
    assert seconds_per_grid_step([4.0]) == 2.0  # one frame: one temporal step; value is irrelevant
    assert seconds_per_grid_step([1.0, 1.0]) == 0.0  # repeated frame of a still: no time passes
    with pytest.raises(ValueError, match="non-decreasing"):
        seconds_per_grid_step([1.0, 0.5])


# ------------------------------------------------------------------------------------ config


def test_config_defaults_validation_and_round_trip(tmp_path):
    config = VideoProcessorConfig()
    assert (config.num_frames, config.max_frames, config.min_pixels, config.max_pixels) == (
        16, 16, 128 * 28 * 28, 128 * 28 * 28)
    assert config.patch_dim == 1176 and config.factor == 28
    with pytest.raises(ValueError, match="mutually exclusive"):
        VideoProcessorConfig(fps=2.0)
    with pytest.raises(ValueError, match="min_pixels"):
        VideoProcessorConfig(min_pixels=10, max_pixels=5)
    custom = VideoProcessorConfig(num_frames=None, fps=2.0, max_frames=32, min_pixels=FAST_MIN_PIXELS)
    custom.save_pretrained(tmp_path)
    assert VideoProcessorConfig.from_pretrained(tmp_path) == custom
    video = json.loads((tmp_path / "video_preprocessor_config.json").read_text())
    assert video["size"] == {"shortest_edge": FAST_MIN_PIXELS, "longest_edge": PAPER_MAX_PIXELS}
    assert video["video_processor_type"] == "Qwen2VLVideoProcessor"
    # an older checkpoint with only the image processor file: geometry from it, video budgets ours
    (tmp_path / "video_preprocessor_config.json").unlink()
    image_only = VideoProcessorConfig.from_pretrained(tmp_path)
    assert image_only == VideoProcessorConfig()


# ------------------------------------------------------------------------------------ token helpers


def test_expand_video_tokens_and_mm_token_type_ids():
    assert expand_video_tokens([1, 9, 2, 9, 3], 9, [3, 1]) == [1, 9, 9, 9, 2, 9, 3]
    with pytest.raises(ValueError, match="placeholders"):
        expand_video_tokens([1, 9, 2], 9, [3, 1])
    with pytest.raises(ValueError, match="more video placeholders"):
        expand_video_tokens([9, 9], 9, [1])
    ids = torch.tensor([[5, 7, 7, 8, 8, 5]])
    assert mm_token_type_ids(ids, image_token_id=7, video_token_id=8).tolist() == [[0, 1, 1, 2, 2, 0]]


def test_collate_concatenates_rows_in_order():
    cfg = VideoProcessorConfig(num_frames=4, min_pixels=FAST_MIN_PIXELS)
    a = preprocess_video(np.zeros((4, 56, 56, 3), np.uint8), [0, 1, 2, 3], cfg)
    b = preprocess_video(np.full((2, 56, 84, 3), 200, np.uint8), [0, 0.5], cfg)
    batch = collate_video_inputs([a, b])
    assert batch["pixel_values_videos"].shape == (32 + 24, 1176)
    assert batch["video_grid_thw"].tolist() == [[2, 4, 4], [1, 4, 6]]
    assert batch["second_per_grid_ts"].dtype == torch.float32
    assert batch["second_per_grid_ts"].tolist() == pytest.approx([2.0, 1.0])


# ------------------------------------------------------------------------------------ golden: real video

# Pinned once from this implementation after the independent checks above passed (loop-built patch
# order, reference resize/normalise, stack.md's worked examples). Frames: vt_data.video.read_video,
# 16 frames by qwen-vl-utils' linspace rule (indices 0, 21, ..., 309 of 310), decord backend.
PANCAKE_GRID = [8, 16, 30]  # 426x240 -> 420x224 at 128*28*28 pixels
PANCAKE_TOKENS = 960
PANCAKE_SECONDS_PER_GRID = 2 * 10.3 / 15
PANCAKE_SUM = 127542.24261000287
PANCAKE_SUM_SQ = 3567393.895641341
PANCAKE_ROW_WEIGHTED = -18560042.832140096  # sum_r r * sum(row r): order-sensitive across rows
PANCAKE_COL_WEIGHTED = -227124622.0134575  # sum_c c * sum(col c): order-sensitive within rows
PANCAKE_FIRST_VALUES = [0.4850919544696808, 0.4558950960636139, 0.3683045208454132, 0.35370612144470215]


def _pancake_checksums(pv: torch.Tensor) -> dict[str, float]:
    x = pv.double()
    n, d = x.shape
    return {
        "sum": float(x.sum()),
        "sum_sq": float((x * x).sum()),
        "row_weighted": float((x.sum(1) * torch.arange(n, dtype=torch.float64)).sum()),
        "col_weighted": float((x.sum(0) * torch.arange(d, dtype=torch.float64)).sum()),
    }


def test_golden_pancake_video():
    from vt_data.video import read_video

    clip = read_video(PANCAKE, num_frames=16)
    assert clip.frames.shape == (16, 240, 426, 3)
    out = preprocess_video(clip.frames, clip.timestamps, VideoProcessorConfig())
    assert out.frame_size == (224, 420)
    assert out.video_grid_thw.tolist() == [PANCAKE_GRID]
    assert out.pixel_values_videos.shape == (8 * 16 * 30, 1176)
    assert out.num_video_tokens == PANCAKE_TOKENS
    assert out.second_per_grid_ts == pytest.approx(PANCAKE_SECONDS_PER_GRID, abs=1e-6)
    sums = _pancake_checksums(out.pixel_values_videos)
    assert sums["sum"] == pytest.approx(PANCAKE_SUM, rel=1e-6)
    assert sums["sum_sq"] == pytest.approx(PANCAKE_SUM_SQ, rel=1e-6)
    assert sums["row_weighted"] == pytest.approx(PANCAKE_ROW_WEIGHTED, rel=1e-6)
    assert sums["col_weighted"] == pytest.approx(PANCAKE_COL_WEIGHTED, rel=1e-6)
    assert out.pixel_values_videos[0, :4].tolist() == pytest.approx(PANCAKE_FIRST_VALUES, abs=1e-5)
    # and the real frames agree with the loop-built reference, not only with the pinned numbers
    reference = _reference_patches(_reference_resize_normalize(torch.from_numpy(clip.frames), (224, 420)))
    torch.testing.assert_close(out.pixel_values_videos, reference, rtol=0, atol=2e-6)


# ------------------------------------------------------------------------------------ optional parity


@pytest.mark.gpu
def test_matches_transformers_video_processor_where_torchvision_exists():
    """Parity with transformers' own processor, on the GPU machine (a CUDA torch with its torchvision);
    deselected here (no torchvision matches CPU torch 2.13: stack.md §1)."""
    pytest.importorskip("torchvision")
    from transformers import Qwen2VLVideoProcessor

    frames = np.random.default_rng(3).integers(0, 256, (6, 130, 230, 3), dtype=np.uint8)
    config = VideoProcessorConfig(num_frames=6, min_pixels=FAST_MIN_PIXELS, max_pixels=PAPER_MAX_PIXELS)
    ours = preprocess_video(frames, [i / 2 for i in range(6)], config)
    processor = Qwen2VLVideoProcessor(min_pixels=config.min_pixels, max_pixels=config.max_pixels)
    theirs = processor(videos=[torch.from_numpy(frames).permute(0, 3, 1, 2)], return_tensors="pt",
                       do_sample_frames=False, cap_pixels_per_frame=False)
    assert theirs["video_grid_thw"].tolist() == ours.video_grid_thw.tolist()
    torch.testing.assert_close(theirs["pixel_values_videos"], ours.pixel_values_videos, rtol=0, atol=1e-5)
