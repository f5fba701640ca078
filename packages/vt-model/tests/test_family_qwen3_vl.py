"""The Qwen3-VL family against references: transformers 5.23's own pure-Python pieces (smart_resize, frame
sampling, timestamps, the processor's placeholder replacement, the model's get_rope_index and forward),
an independent implementation of the pixel pipeline and of the transformers 4.57 layout and position
rule written from the published algorithm, the real pancake video, and (where torchvision exists) the
real Qwen3VLVideoProcessor."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vt_model.families import family_from_pretrained, get_family
from vt_model.families.qwen3_vl import (
    QWEN3_VL_FAST_MIN_PIXELS,
    Qwen3VLVideoConfig,
    expand_video_text,
    group_timestamps,
    preprocess_video,
    rope_index,
    smart_resize,
)
from vt_model.processing import mm_token_type_ids

PANCAKE = Path(__file__).resolve().parents[3] / "tests/data/decord/examples/flipping_a_pancake.mkv"
FAMILY = get_family("qwen3_vl")

# ------------------------------------------------------------------------------------ references


def _reference_pixels(frames: torch.Tensor, size: tuple[int, int], p: int = 16, m: int = 2) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> (rows, 3 * 2 * p * p), written from the published steps one patch at a time:
    uint8 bicubic antialiased resize, x / 255, (x - 0.5) / 0.5, time padded with the last frame, then one
    row per patch in the order (time group, window row, window col, patch row, patch col), each row
    holding channel, frame in the pair, pixel row, pixel col."""
    x = frames.permute(0, 3, 1, 2)
    if tuple(x.shape[-2:]) != size:
        x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)
    x = (x.double() / 255.0 - 0.5) / 0.5
    if x.shape[0] % 2:
        x = torch.cat([x, x[-1:]])
    rows = []
    for g in range(x.shape[0] // 2):
        for a in range(size[0] // (p * m)):
            for b in range(size[1] // (p * m)):
                for i in range(m):
                    for j in range(m):
                        y0, x0 = (a * m + i) * p, (b * m + j) * p
                        block = x[2 * g : 2 * g + 2, :, y0 : y0 + p, x0 : x0 + p]  # (frame, channel, p, p)
                        rows.append(block.transpose(0, 1).reshape(-1))  # channel, frame, row, col
    return torch.stack(rows).float()


def _release_layout_text(text: str, grids: list[list[int]], frame_times: list[list[float]]) -> str:
    """transformers 4.57's Qwen3VLProcessor text expansion (the release layout), written from its
    published algorithm: per video, per temporal group k, `<t seconds>` with t the mean of the group's
    first and last frame time (last frame repeated), then <|vision_start|>, h*w/4 pads, <|vision_end|>;
    the whole template triple is replaced."""
    for (t, h, w), times in zip(grids, frame_times, strict=True):
        times = list(times) + [times[-1]] * (len(times) % 2)
        block = ""
        for k in range(t):
            seconds = (times[2 * k] + times[2 * k + 1]) / 2
            block += f"<{seconds:.1f} seconds><|vision_start|>" + "<|video_pad|>" * (h * w // 4)
            block += "<|vision_end|>"
        text = text.replace("<|vision_start|><|video_pad|><|vision_end|>", block, 1)
    return text


def _reference_positions(ids: list[int], grids: list[list[int]], vstart: int, video: int) -> list[list[int]]:
    """transformers 4.57's Qwen3-VL get_rope_index for one unpadded sample, as a per-token loop: each
    <|vision_start|> followed by a video pad opens a frame block of h*w/4 pads taking the next frame of
    the next video; text ids count up from the previous maximum + 1; a block's ids are (s, s + row,
    s + col) with s the id the next text token would have had."""
    frames = [(h // 2, w // 2) for t, h, w in grids for _ in range(t)]
    out: list[list[int]] = []
    nxt, i, f = 0, 0, 0
    while i < len(ids):
        if ids[i] == video and i > 0 and ids[i - 1] == vstart:
            h, w = frames[f]
            f += 1
            for r in range(h):
                for c in range(w):
                    out.append([nxt, nxt + r, nxt + c])
            nxt += max(h, w)
            i += h * w
        else:
            out.append([nxt] * 3)
            nxt += 1
            i += 1
    assert f == len(frames)
    return [[row[axis] for row in out] for axis in range(3)]


def _installed_processor_text(tokenizer, text: str, grids: torch.Tensor, indices: list, fps: float) -> str:
    """The installed transformers' Qwen3VLProcessor placeholder replacement (5.x layout). Its __init__
    resolves the torchvision-backed video processor class, which fails without torchvision, so the
    pure-Python text path is driven on an uninitialised instance carrying the attributes it reads."""
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor
    from transformers.video_utils import VideoMetadata

    processor = object.__new__(Qwen3VLProcessor)
    processor.tokenizer, processor.video_processor = tokenizer, Qwen3VLVideoProcessor()
    processor.image_token, processor.video_token = "<|image_pad|>", "<|video_pad|>"
    processor.vision_start_token, processor.vision_end_token = "<|vision_start|>", "<|vision_end|>"
    metadata = [VideoMetadata(total_num_frames=int(max(idx)) + 1, fps=fps, frames_indices=np.asarray(idx))
                for idx in indices]
    videos = {"video_grid_thw": grids, "video_metadata": metadata}
    replacements = [processor.replace_video_token(videos, i) for i in range(len(indices))]
    return processor.get_text_with_replacements([text], [], replacements)[0][0]


def _messages(n_videos: int = 1, question: str = "What colour is the shape?") -> list[dict]:
    content = [*[{"type": "video"}] * n_videos, {"type": "text", "text": question}]
    return [{"role": "user", "content": content}]


# ------------------------------------------------------------------------------------ preprocessing


@pytest.mark.parametrize("cap", [False, True])
def test_smart_resize_matches_transformers(cap):
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import smart_resize as theirs

    processor = Qwen3VLVideoProcessor()
    for min_pixels, max_pixels in [(128 * 32 * 32, 768 * 32 * 32), (QWEN3_VL_FAST_MIN_PIXELS, 768 * 32 * 32),
                                   (4096, 16 * 64 * 64)]:
        config = Qwen3VLVideoConfig(min_pixels=min_pixels, max_pixels=max_pixels, cap_pixels_per_frame=cap)
        size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
        for t in (2, 3, 4, 5, 16, 41):
            for h, w in [(240, 426), (56, 56), (10, 300), (31, 33), (720, 1280), (48, 80), (1080, 1920)]:
                if not cap:
                    assert smart_resize(t, h, w, 2, 32, min_pixels, max_pixels) == theirs(
                        t, h, w, 2, 32, min_pixels, max_pixels)
                patches = processor.get_num_of_video_patches(
                    t, h, w, {"size": size, "cap_pixels_per_frame": cap})
                gt, gh, gw = config.grid_thw(t, h, w)
                assert gt * gh * gw == patches, (t, h, w)
    with pytest.raises(ValueError, match="at least 2 frames"):
        smart_resize(1, 64, 64)


def test_sampling_and_timestamps_match_transformers():
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor
    from transformers.video_utils import VideoMetadata

    processor = Qwen3VLVideoProcessor()
    for total, fps in [(310, 30.0), (9, 24.0), (5000, 29.97), (48, 2.0), (3, 30.0)]:
        for kwargs in ({}, {"fps": 1.0}, {"num_frames": 7, "fps": None}):
            config = Qwen3VLVideoConfig(**kwargs)
            metadata = VideoMetadata(total_num_frames=total, fps=fps)
            expected = processor.sample_frames(metadata, num_frames=kwargs.get("num_frames"),
                                               fps=kwargs.get("fps", 2.0))
            assert np.array_equal(config.sample_indices(total, fps), expected), (total, fps, kwargs)
    for indices in ([0, 21, 42], [0, 7, 15, 22, 30], [3], [0, 1, 2, 3]):
        theirs = Qwen3VLProcessor._calculate_timestamps(None, list(indices), 15.0, 2)
        assert group_timestamps(np.asarray(indices) / 15.0) == pytest.approx(theirs, abs=1e-12)


@pytest.mark.parametrize("num_frames", [4, 5])  # 5: odd, padded with the last frame
def test_pixels_match_an_independent_implementation(num_frames):
    gen = torch.Generator().manual_seed(num_frames)
    frames = torch.randint(0, 256, (num_frames, 70, 100, 3), dtype=torch.uint8, generator=gen)
    config = Qwen3VLVideoConfig(num_frames=num_frames, fps=None, min_pixels=QWEN3_VL_FAST_MIN_PIXELS)
    out = preprocess_video(frames, [k / 2 for k in range(num_frames)], config)
    assert out.frame_size == (64, 96) == smart_resize(num_frames, 70, 100, 2, 32, QWEN3_VL_FAST_MIN_PIXELS)
    grid_t = math.ceil(num_frames / 2)
    assert out.video_grid_thw.tolist() == [[grid_t, 4, 6]] and out.video_grid_thw.dtype == torch.int64
    assert out.pixel_values_videos.shape == (grid_t * 24, 1536)
    assert out.pixel_values_videos.dtype == torch.float32
    assert out.num_video_tokens == grid_t * 6 and out.tokens_per_group == 6
    reference = _reference_pixels(frames, (64, 96))
    torch.testing.assert_close(out.pixel_values_videos, reference, rtol=0, atol=2e-6)
    assert out.timestamps == pytest.approx([0.25, 1.25, 2.0][:grid_t])


def test_config_validation_and_round_trip(tmp_path):
    config = Qwen3VLVideoConfig()
    assert (config.fps, config.min_frames, config.max_frames, config.patch_dim, config.factor) == (
        2.0, 4, 768, 1536, 32)
    with pytest.raises(ValueError, match="mutually exclusive"):
        Qwen3VLVideoConfig(num_frames=8)
    with pytest.raises(ValueError, match="min_pixels"):
        Qwen3VLVideoConfig(min_pixels=10, max_pixels=5)
    custom = Qwen3VLVideoConfig(num_frames=8, fps=None, max_frames=8, min_pixels=QWEN3_VL_FAST_MIN_PIXELS,
                                cap_pixels_per_frame=True, outer_vision_tokens=True)
    custom.save_pretrained(tmp_path)
    assert Qwen3VLVideoConfig.from_pretrained(tmp_path) == custom
    saved = json.loads((tmp_path / "video_preprocessor_config.json").read_text())
    assert saved["video_processor_type"] == "Qwen3VLVideoProcessor"
    assert saved["size"] == {"shortest_edge": QWEN3_VL_FAST_MIN_PIXELS, "longest_edge": 768 * 32 * 32}
    (tmp_path / "video_preprocessor_config.json").unlink()  # image processor file only: geometry, defaults
    assert Qwen3VLVideoConfig.from_pretrained(tmp_path) == Qwen3VLVideoConfig()


# ------------------------------------------------------------------------------------ golden: real video

# Pinned from this implementation after it matched the independent reference below (16 frames by the
# reader's linspace rule, decord, timestamps = frame index / fps as the processor computes them).
PANCAKE_GRID = [8, 10, 18]  # 426x240 -> 288x160: the 768*32*32 budget covers all 16 frames
# group k shows the mean time of frames 2k and 2k + 1, to one decimal (0.35 prints as 0.3: binary float)
PANCAKE_TIMESTAMPS = ["<0.3 seconds>", "<1.7 seconds>", "<3.1 seconds>", "<4.5 seconds>", "<5.8 seconds>",
                      "<7.2 seconds>", "<8.6 seconds>", "<9.9 seconds>"]
PANCAKE_SUM = -192452.80862294696
PANCAKE_SUM_SQ = 551405.5456144128
PANCAKE_ROW_WEIGHTED = -162932026.14925784
PANCAKE_COL_WEIGHTED = -309516683.6320169


def test_golden_pancake_video_pixels_text_and_ids():
    from vt_data.video import read_video
    from vt_model.offline_tokenizers import build_tokenizer

    clip = read_video(PANCAKE, num_frames=16)
    times = clip.indices / clip.fps
    config = Qwen3VLVideoConfig(num_frames=16, fps=None, max_frames=16)
    out = preprocess_video(clip.frames, times, config)
    assert out.frame_size == (160, 288) and out.video_grid_thw.tolist() == [PANCAKE_GRID]
    assert out.num_video_tokens == 360 and out.pixel_values_videos.shape == (8 * 10 * 18, 1536)
    x = out.pixel_values_videos.double()
    n, d = x.shape
    assert float(x.sum()) == pytest.approx(PANCAKE_SUM, rel=1e-6)
    assert float((x * x).sum()) == pytest.approx(PANCAKE_SUM_SQ, rel=1e-6)
    row_weighted = float((x.sum(1) * torch.arange(n, dtype=torch.float64)).sum())  # order across rows
    col_weighted = float((x.sum(0) * torch.arange(d, dtype=torch.float64)).sum())  # order within rows
    assert row_weighted == pytest.approx(PANCAKE_ROW_WEIGHTED, rel=1e-6)
    assert col_weighted == pytest.approx(PANCAKE_COL_WEIGHTED, rel=1e-6)
    reference = _reference_pixels(torch.from_numpy(clip.frames[:4]), (160, 288))  # first two groups
    torch.testing.assert_close(out.pixel_values_videos[: len(reference)], reference, rtol=0, atol=2e-6)

    tokenizer = FAMILY.prepare_tokenizer(build_tokenizer("tiny", FAMILY.tiny_corpus()))
    text = tokenizer.apply_chat_template(_messages(), tokenize=False, add_generation_prompt=True)
    release = _release_layout_text(text, [PANCAKE_GRID], [list(times)])
    assert expand_video_text(text, [out]) == release
    assert re.findall(r"<[0-9.]+ seconds>", release) == PANCAKE_TIMESTAMPS
    assert FAMILY.encode_video_prompt(tokenizer, text, [out]) == tokenizer(release, add_special_tokens=False)[
        "input_ids"]
    # transformers 5.x layout: the installed processor's own replacement, ids included
    wrapped = Qwen3VLVideoConfig(num_frames=16, fps=None, max_frames=16, outer_vision_tokens=True)
    out5 = preprocess_video(clip.frames, times, wrapped)
    installed = _installed_processor_text(tokenizer, text, out5.video_grid_thw, [clip.indices], clip.fps)
    assert expand_video_text(text, [out5]) == installed
    ids5 = FAMILY.encode_video_prompt(tokenizer, text, [out5])
    assert ids5 == tokenizer(installed, add_special_tokens=False)["input_ids"]
    assert len(ids5) == len(FAMILY.encode_video_prompt(tokenizer, text, [out])) + 2  # the outer pair


def test_processor_default_sampling_on_the_pancake():
    """fps=2 sampling as the processor does it (20 of 310 frames at 30 fps), read by decord directly."""
    import decord

    config = Qwen3VLVideoConfig()
    reader = decord.VideoReader(str(PANCAKE))
    indices = config.sample_indices(len(reader), reader.get_avg_fps())
    assert len(indices) == 20 and indices[-1] == 309
    frames = reader.get_batch(indices.tolist()).asnumpy()
    out = preprocess_video(frames, indices / reader.get_avg_fps(), config)
    assert out.frame_size == (128, 256) and out.video_grid_thw.tolist() == [[10, 8, 16]]
    reference = _reference_pixels(torch.from_numpy(frames[:2]), (128, 256))
    torch.testing.assert_close(out.pixel_values_videos[: len(reference)], reference, rtol=0, atol=2e-6)


# ------------------------------------------------------------------------------------ layout and positions


def test_text_expansion_layouts_and_errors():
    a = preprocess_video(np.zeros((4, 64, 64, 3), np.uint8), [0, 1, 2, 3], FAMILY.tiny_video_config())
    text = "x<|vision_start|><|video_pad|><|vision_end|>y"
    assert expand_video_text(text, [a]) == "x" + a.prompt_text() + "y"
    assert a.prompt_text().startswith("<0.5 seconds><|vision_start|><|video_pad|>")
    assert a.prompt_text().count("<|video_pad|>") == a.num_video_tokens == 8
    assert expand_video_text("x<|video_pad|>y", [a]) == "x" + a.prompt_text() + "y"  # a bare pad too
    with pytest.raises(ValueError, match="1 video placeholders for 2 videos"):
        expand_video_text(text, [a, a])


def test_positions_match_the_release_rule_with_padding():
    video, vstart = 50, 52
    grids = torch.tensor([[3, 4, 4], [2, 4, 6]])  # 3 frame blocks of 2 x 2, then 2 blocks of 2 x 3
    first = [1, 9, vstart, *[video] * 4, 53, 9, vstart, *[video] * 4, 53, 9, vstart, *[video] * 4, 53]
    second = [1, 2, vstart, *[video] * 6, 53, 3, vstart, *[video] * 6, 53, 4]
    pad = len(first) - len(second)
    ids = torch.tensor([first, second + [0] * pad])
    mask = torch.tensor([[1] * len(first), [1] * len(second) + [0] * pad])
    pos, deltas = rope_index(ids, mask, grids, video_token_id=video, image_token_id=51,
                             vision_start_token_id=vstart)
    assert pos[:, 0].tolist() == _reference_positions(first, [[3, 4, 4]], vstart, video)
    assert pos[:, 1, : len(second)].tolist() == _reference_positions(second, [[2, 4, 6]], vstart, video)
    assert (pos[:, 1, len(second):] == 1).all()
    assert deltas[:, 0].tolist() == [int(pos[:, 0].max()) + 1 - len(first),
                                     int(pos[:, 1, : len(second)].max()) + 1 - len(first)]


# ------------------------------------------------------------------------------------ the model


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vt_model.tiny import write_tiny_model

    out = tmp_path_factory.mktemp("tiny-qwen3vl")
    write_tiny_model(out, family="qwen3_vl", seed=0)
    return out


@pytest.fixture(scope="module")
def qwen3_model_and_tokenizer(qwen3_dir: Path):
    from vt_model.loading import load_model, load_tokenizer

    return load_model(qwen3_dir, attn_implementation="eager").eval(), load_tokenizer(qwen3_dir)


def test_tiny_directory_describes_its_family(qwen3_dir: Path, qwen3_model_and_tokenizer):
    model, tokenizer = qwen3_model_and_tokenizer
    record = json.loads((qwen3_dir / "vt_model_tiny.json").read_text())
    assert record["family"] == "qwen3_vl" and record["num_parameters"] == 288_544
    assert type(model).__name__ == "Qwen3VLForConditionalGeneration"
    assert family_from_pretrained(qwen3_dir) is FAMILY
    assert FAMILY.video_config_from_pretrained(qwen3_dir) == FAMILY.tiny_video_config()
    assert tokenizer.chat_template == FAMILY.chat_template
    assert tokenizer.convert_tokens_to_ids("<think>") != tokenizer.unk_token_id
    text = tokenizer.apply_chat_template(_messages(), tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>What colour is the shape?"
                    "<|im_end|>\n<|im_start|>assistant\n")  # no default system turn, unlike Qwen2.5-VL


def _batch(model, tokenizer, frame_counts: list[int], outer: bool) -> dict:
    """Right-padded batch, one video per sample, built only through the family interface."""
    config = FAMILY.tiny_video_config(outer_vision_tokens=outer)
    videos, rows = [], []
    for k, n in enumerate(frame_counts):
        gen = torch.Generator().manual_seed(k)
        frames = torch.randint(0, 256, (n, 56, 56 + 32 * k, 3), dtype=torch.uint8, generator=gen)
        video = FAMILY.preprocess_video(frames, [i * 0.7 for i in range(n)], config)
        text = tokenizer.apply_chat_template(_messages(question="Which shape comes first?" * (k + 1)),
                                             tokenize=False, add_generation_prompt=True)
        videos.append(video)
        rows.append(FAMILY.encode_video_prompt(tokenizer, text, [video]))
    length = max(map(len, rows))
    input_ids = torch.tensor([r + [tokenizer.pad_token_id] * (length - len(r)) for r in rows])
    attention_mask = torch.tensor([[1] * len(r) + [0] * (length - len(r)) for r in rows])
    return {"input_ids": input_ids, "attention_mask": attention_mask,
            "mm_token_type_ids": mm_token_type_ids(input_ids, image_token_id=model.config.image_token_id,
                                                   video_token_id=model.config.video_token_id),
            **FAMILY.collate_videos(videos)}


@pytest.mark.parametrize("outer", [False, True])
@torch.no_grad()
def test_logits_with_our_positions_equal_transformers_forward(qwen3_model_and_tokenizer, outer):
    model, tokenizer = qwen3_model_and_tokenizer
    batch = _batch(model, tokenizer, [4, 6], outer)
    assert set(batch) <= set(FAMILY.model_input_keys) and set(FAMILY.per_video_keys) <= set(batch)
    ours = FAMILY.position_ids(model.config, batch)
    theirs, _ = model.model.get_rope_index(batch["input_ids"], mm_token_type_ids=batch["mm_token_type_ids"],
                                           video_grid_thw=batch["video_grid_thw"],
                                           attention_mask=batch["attention_mask"])
    real = batch["attention_mask"].bool()
    assert torch.equal(ours[:, real], theirs[:, real])
    reference = model(**batch).logits  # transformers computes its own positions from ids + grid
    mine = model(**batch, position_ids=ours).logits
    torch.testing.assert_close(mine[real], reference[real], rtol=1e-5, atol=1e-5)
    # the config-dict form (config.json, as DataLoader workers read it) gives the same ids
    assert torch.equal(FAMILY.position_ids(model.config.to_dict(), batch), ours)


@torch.no_grad()
def test_generate_continues_our_positions(qwen3_model_and_tokenizer):
    """generate() extends passed position ids by +1 per new token: its logits equal a full forward over
    prompt + generated tokens with our ids for the whole sequence."""
    model, tokenizer = qwen3_model_and_tokenizer
    batch = _batch(model, tokenizer, [4], outer=False)
    prompt_len = batch["input_ids"].shape[1]
    out = model.generate(**batch, position_ids=FAMILY.position_ids(model.config, batch), max_new_tokens=4,
                         do_sample=False, output_logits=True, return_dict_in_generate=True)
    steps = torch.stack(out.logits, dim=1)  # (1, n, V)
    sequence = out.sequences
    new = sequence.shape[1] - prompt_len
    types = torch.cat([batch["mm_token_type_ids"], torch.zeros(1, new, dtype=torch.long)], 1)  # new: text
    full = dict(batch, input_ids=sequence, attention_mask=torch.ones_like(sequence), mm_token_type_ids=types)
    logits = model(**full, position_ids=FAMILY.position_ids(model.config, full)).logits
    torch.testing.assert_close(steps, logits[:, prompt_len - 1 : prompt_len - 1 + steps.shape[1]],
                               rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_qwen3_5_shares_the_video_path(qwen3_model_and_tokenizer):
    """Qwen3.5 (hybrid linear-attention text model, no DeepStack) maps to this family: the same inputs
    give its own get_rope_index's ids and its own forward's logits."""
    from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration

    from vt_model.offline_tokenizers import special_token_ids

    qwen3, tokenizer = qwen3_model_and_tokenizer
    assert get_family("qwen3_5") is FAMILY and get_family("qwen3_5_moe") is FAMILY
    ids = special_token_ids(tokenizer)
    text = {"vocab_size": qwen3.config.text_config.vocab_size, "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
            "layer_types": ["linear_attention", "full_attention"], "linear_key_head_dim": 16,
            "linear_value_head_dim": 16, "linear_num_key_heads": 2, "linear_num_value_heads": 4,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e7, "mrope_section": [2, 1, 1],
                                "mrope_interleaved": True, "partial_rotary_factor": 0.5},
            **{k: ids[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}}
    vision = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64,
              "num_position_embeddings": 256}
    config = Qwen3_5Config(text_config=text, vision_config=vision,
                           **{k: ids[k] for k in ("image_token_id", "video_token_id", "vision_start_token_id",
                                                  "vision_end_token_id")})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Qwen3_5ForConditionalGeneration(config).eval()
    batch = _batch(model, tokenizer, [4], outer=False)
    ours = FAMILY.position_ids(model.config, batch)
    theirs, _ = model.model.get_rope_index(batch["input_ids"], mm_token_type_ids=batch["mm_token_type_ids"],
                                           video_grid_thw=batch["video_grid_thw"],
                                           attention_mask=batch["attention_mask"])
    assert torch.equal(ours, theirs)
    torch.testing.assert_close(model(**batch, position_ids=ours).logits, model(**batch).logits,
                               rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------ vLLM requests


def _vllm_expand(tokenizer, prompt_ids: list[int], placeholder: list[int], times, pads_per_block: int):
    """vLLM 0.32's Qwen3-VL prompt update for one video, written from its source (Qwen3VLMultiModal-
    Processor.get_video_repl and _replace_video_token_placeholders): the first occurrence of the
    placeholder ids replaced by, per temporal group, `<t seconds>` tokenised on its own, then
    <|vision_start|>, the pads, <|vision_end|>."""
    from vt_model.prompts import special_ids

    ids = special_ids(tokenizer)
    repl: list[int] = []
    for t in times:
        repl += tokenizer.encode(f"<{t:.1f} seconds>", add_special_tokens=False)
        repl += [ids.vision_start, *[ids.video_pad] * pads_per_block, ids.vision_end]
    k = len(placeholder)
    at = next(i for i in range(len(prompt_ids)) if prompt_ids[i:i + k] == placeholder)
    return prompt_ids[:at] + repl + prompt_ids[at + k:]


def _vllm_times(metadata: dict) -> list[float]:
    """vLLM 0.32's Qwen3-VL timestamps of pre-sampled frames (Qwen3VLProcessingInfo._get_video_second_idx
    without sampling): frames_indices / fps, the last index repeated to an even count, pair means."""
    indices = list(metadata["frames_indices"])
    indices += indices[-1:] * (len(indices) % 2)
    times = [i / metadata["fps"] for i in indices]
    return [(times[i] + times[i + 1]) / 2 for i in range(0, len(times), 2)]


@pytest.fixture(scope="module")
def tiny_tokenizer():
    from vt_model.offline_tokenizers import build_tokenizer

    return FAMILY.prepare_tokenizer(build_tokenizer("tiny", FAMILY.tiny_corpus()))


@pytest.mark.parametrize("placeholder", ["<|video_pad|>", "<|vision_start|><|video_pad|><|vision_end|>"])
@pytest.mark.parametrize("outer", [False, True])
def test_vllm_requests_expand_to_our_ids(tiny_tokenizer, monkeypatch, placeholder, outer):
    """Whichever placeholder vLLM replaces (it depends on the transformers beside it) and whichever layout
    the config asks for, vLLM's expansion of our frames request and of our features request gives our
    prompt ids; 5 frames (odd: the last one repeated) at irregular times."""
    from vt_model.families import qwen3_vl
    from vt_model.prompts import tokenize

    monkeypatch.setattr(qwen3_vl, "vllm_placeholder", lambda: placeholder)
    tokenizer, config = tiny_tokenizer, FAMILY.tiny_video_config(outer_vision_tokens=outer)
    frames = np.random.default_rng(0).integers(0, 256, (5, 64, 96, 3), dtype=np.uint8)
    times = [0.0, 0.37, 0.74, 1.11, 1.9]
    video = FAMILY.preprocess_video(frames, times, config)
    text = tiny_tokenizer.apply_chat_template(_messages(), tokenize=False, add_generation_prompt=True)
    ours = FAMILY.encode_video_prompt(tokenizer, text, [video])
    target = tokenize(tokenizer, placeholder)

    request = FAMILY.vllm_frames_request(text, frames, times, config)
    sent, metadata = request["multi_modal_data"]["video"]
    assert sent is frames and metadata["total_num_frames"] == 5
    assert _vllm_times(metadata) == list(video.timestamps)  # the same floats, not just the same text
    assert _vllm_expand(tokenizer, tokenize(tokenizer, request["prompt"]), target, video.timestamps,
                        video.tokens_per_group) == ours

    features = torch.zeros(video.num_video_tokens, 8)
    prompt = {"input_ids": torch.tensor(ours), "video_grid_thw": video.video_grid_thw}
    request = FAMILY.vllm_embeds_request(tokenizer, prompt, features)
    mm = request["multi_modal_data"]["video"]
    assert mm["video_embeds"] is features and mm["video_grid_thw"].tolist() == [[3, 4, 6]]
    assert mm["timestamps"] == [[float(f"{t:.1f}") for t in video.timestamps]]
    assert _vllm_expand(tokenizer, request["prompt_token_ids"], target, mm["timestamps"][0],
                        video.tokens_per_group) == ours
    assert FAMILY.vllm_position_mismatch(None, prompt) is None


def test_video_span_refuses_ids_without_the_video(tiny_tokenizer):
    from vt_model.families.qwen3_vl import video_span
    from vt_model.prompts import tokenize

    frames, config = np.zeros((4, 64, 64, 3), np.uint8), FAMILY.tiny_video_config()
    video = FAMILY.preprocess_video(frames, [0, 1, 2, 3], config)
    ids = FAMILY.encode_video_prompt(tiny_tokenizer, "x<|vision_start|><|video_pad|><|vision_end|>y", [video])
    start, end, times = video_span(tiny_tokenizer, ids, 2)
    assert times == [0.5, 2.5] and ids[start:end] == tokenize(tiny_tokenizer, video.prompt_text())
    with pytest.raises(ValueError, match="2 frame blocks, the video grid 3"):
        video_span(tiny_tokenizer, ids, 3)
    plain = tokenize(tiny_tokenizer, "x<|vision_start|><|video_pad|><|vision_end|>")
    with pytest.raises(ValueError, match="frame block 0 of the prompt ids is not preceded"):
        video_span(tiny_tokenizer, plain, 1)


# ------------------------------------------------------------------------------------ optional parity


@pytest.mark.gpu
def test_matches_transformers_video_processor_where_torchvision_exists():
    """Parity with transformers' own Qwen3VLVideoProcessor and Qwen3VLProcessor on the GPU machine (a CUDA
    torch with its torchvision); deselected here (stack.md §1). The processor runs on CPU tensors, i.e.
    torchvision's uint8 resize path, which is what this module re-implements."""
    pytest.importorskip("torchvision")
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor
    from transformers.video_utils import VideoMetadata

    from vt_data.video import read_video
    from vt_model.offline_tokenizers import build_tokenizer

    clip = read_video(PANCAKE, num_frames=16)
    random = np.random.default_rng(3).integers(0, 256, (5, 130, 230, 3), dtype=np.uint8)
    config = Qwen3VLVideoConfig(num_frames=16, fps=None, max_frames=16, outer_vision_tokens=True)
    video_processor = Qwen3VLVideoProcessor(size={"shortest_edge": config.min_pixels,
                                                  "longest_edge": config.max_pixels})
    tokenizer = FAMILY.prepare_tokenizer(build_tokenizer("tiny", FAMILY.tiny_corpus()))
    processor = Qwen3VLProcessor(image_processor=Qwen2VLImageProcessor(), tokenizer=tokenizer,
                                 video_processor=video_processor, chat_template=FAMILY.chat_template)
    for frames, indices, fps in [(clip.frames, clip.indices, clip.fps), (random, np.arange(5) * 3, 10.0)]:
        ours = preprocess_video(frames, indices / fps, config)
        metadata = VideoMetadata(total_num_frames=int(indices[-1]) + 1, fps=fps, frames_indices=indices)
        text = tokenizer.apply_chat_template(_messages(), tokenize=False, add_generation_prompt=True)
        theirs = processor(text=[text], videos=[torch.from_numpy(frames).permute(0, 3, 1, 2)],
                           video_metadata=[metadata], do_sample_frames=False, cap_pixels_per_frame=False,
                           return_tensors="pt")
        assert theirs["video_grid_thw"].tolist() == ours.video_grid_thw.tolist()
        torch.testing.assert_close(theirs["pixel_values_videos"], ours.pixel_values_videos, rtol=0, atol=1e-5)
        assert theirs["input_ids"][0].tolist() == FAMILY.encode_video_prompt(tokenizer, text, [ours])
        ids = theirs["input_ids"]
        assert theirs["mm_token_type_ids"].tolist() == mm_token_type_ids(
            ids, image_token_id=processor.image_token_id, video_token_id=processor.video_token_id).tolist()
