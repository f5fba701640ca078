"""SFT example encoding and batch collation for video samples of any model family (vt_model.families).

Rules this module enforces (method.md §10.1, §10.2; stack.md §3):
  * the loss is on the assistant response only: `record.target` (process + "\\n" + solution) followed by
    `<|im_end|>`; every prompt, vision and padding position is -100;
  * vision and pad tokens are masked by explicit special-token ids read from the tokenizer, never by a
    processor-class check;
  * vision tokens are never truncated: a sample over the token budget either fails with a message
    naming the record and the counts, or (on request) is re-preprocessed with fewer frames;
  * every batch carries `mm_token_type_ids`, the family's per-video keys (Qwen2.5-VL's include
    `second_per_grid_ts`), and `position_ids` (3, B, L) computed by the family's own rule (Qwen2.5-VL:
    `vt_model.positions`, the original rule; always, not only where the installed transformers
    deviates: the rule is then pinned by our code and golden tests, whatever the transformers version).

The family is the one of the video preprocessing settings (`processor_config.family`; a model directory
names it in its config.json and vt_model.families reads the settings from there). Positions are computed
per example (right padding never shifts a sample's ids), so encoding can run in DataLoader workers
without the model; the one model constant Qwen2.5-VL's rule needs, the vision config's
`tokens_per_second`, is a parameter (2 for every released Qwen2.5-VL and for vt_model.tiny) that
`check_position_config` compares with a loaded model's config.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vt_data.records import VideoQA
from vt_model.families import family_for_config, get_family
from vt_model.processing import VideoProcessorConfig
from vt_model.prompts import IM_END, PromptTemplate, encode_prompt, record_label, special_ids, tokenize

IGNORE_INDEX = -100
# Qwen2.5-VL's vision_config.tokens_per_second (every released size, and vt_model.tiny).
QWEN25_VL_TOKENS_PER_SECOND = 2.0
# rope_index leaves padding positions at 1 (as transformers does); padded columns use the same value.
POSITION_PAD = 1
# Keys of a collated batch that a model's forward takes: the union of every family's model_input_keys
# (a batch holds only its own family's; tests/test_family_pipeline.py checks the union).
MODEL_KEYS = ("input_ids", "attention_mask", "labels", "mm_token_type_ids", "position_ids",
              "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")
# Keys holding one row per video: the union of every family's per_video_keys (checked there too).
PER_VIDEO_KEYS = ("video_grid_thw", "second_per_grid_ts")
ON_OVERFLOW = ("error", "reduce_frames")


class TokenBudgetError(ValueError):
    """A sample that does not fit the token budget (vision tokens are never truncated)."""


@dataclass(frozen=True)
class TokenBudget:
    """max_length: the most tokens (prompt + video + target) one sample may have.

    on_overflow: "error" raises TokenBudgetError naming the record and the counts; "reduce_frames"
    halves the frame count (uniformly subsampling the given frames, re-preprocessing) until the sample
    fits, and raises once `min_frames` frames still do not fit.
    """

    max_length: int
    on_overflow: str = "error"
    min_frames: int = 2

    def __post_init__(self) -> None:
        if self.max_length < 1:
            raise ValueError(f"max_length must be positive, got {self.max_length}")
        if self.on_overflow not in ON_OVERFLOW:
            raise ValueError(f"on_overflow must be one of {ON_OVERFLOW}, got {self.on_overflow!r}")
        if self.min_frames < 1:
            raise ValueError(f"min_frames must be >= 1, got {self.min_frames}")


def _frames_and_timestamps(video: Any, timestamps: Any) -> tuple[np.ndarray | torch.Tensor, np.ndarray]:
    """A VideoClip (frames + timestamps) or a bare (T, H, W, 3) uint8 array plus `timestamps`."""
    if hasattr(video, "frames") and hasattr(video, "timestamps"):
        frames, ts = video.frames, video.timestamps if timestamps is None else timestamps
    else:
        frames, ts = video, timestamps
    if ts is None:
        raise ValueError("frames need their timestamps (pass a VideoClip or timestamps=...)")
    ts = np.asarray(ts.cpu() if isinstance(ts, torch.Tensor) else ts, dtype=np.float64).reshape(-1)
    if len(ts) != len(frames):
        raise ValueError(f"{len(frames)} frames but {len(ts)} timestamps")
    return frames, ts


def subsample_frames(num_frames: int, target: int) -> np.ndarray:
    """Indices of `target` frames spread uniformly over `num_frames` (first and last kept)."""
    if target >= num_frames:
        return np.arange(num_frames)
    return np.unique(np.round(np.linspace(0, num_frames - 1, target)).astype(np.int64))


def example_positions(input_ids: torch.Tensor, video: Mapping[str, torch.Tensor], tokenizer,
                      processor_config: VideoProcessorConfig, *,
                      tokens_per_second: float = QWEN25_VL_TOKENS_PER_SECOND) -> torch.Tensor:
    """(L,) ids of one sample and its video's per-video keys (video_grid_thw (1, 3), ...) -> (3, L)
    position ids by the rule of the processor config's family, without the model: the token ids come
    from the tokenizer, the merge size (and Qwen2.5-VL's tokens_per_second) from the arguments."""
    ids = special_ids(tokenizer)
    model_config = {
        "video_token_id": ids.video_pad, "image_token_id": ids.image_pad,
        "vision_start_token_id": ids.vision_start,
        "vision_config": {"spatial_merge_size": processor_config.merge_size,
                          "tokens_per_second": tokens_per_second},
    }
    family = get_family(processor_config.family)
    return family.position_ids(model_config, {"input_ids": input_ids[None], **video})[:, 0]  # (3, L)


def check_position_config(model_config: Any, processor_config: VideoProcessorConfig,
                          tokens_per_second: float = QWEN25_VL_TOKENS_PER_SECOND) -> None:
    """Raise if the family or the constants examples were encoded with disagree with a model's config."""
    family = family_for_config(model_config)
    if family.name != processor_config.family:
        raise ValueError(f"examples are encoded for the {processor_config.family} family, the model is "
                         f"{model_config.model_type} ({family.name})")
    vision = model_config.vision_config
    model_tps = getattr(vision, "tokens_per_second", None)  # only rules with temporal ids in seconds
    if model_tps is not None and float(model_tps) != float(tokens_per_second):
        raise ValueError(f"examples use tokens_per_second={tokens_per_second}, the model {model_tps}")
    if int(vision.spatial_merge_size) != processor_config.merge_size:
        raise ValueError(f"processor merge_size={processor_config.merge_size}, the model "
                         f"{vision.spatial_merge_size}")


def encode_sft_example(
    tokenizer,
    record: VideoQA,
    video: Any,
    processor_config: VideoProcessorConfig | None = None,
    template: str | PromptTemplate = "video_thinker",
    budget: TokenBudget | None = None,
    *,
    timestamps: Sequence[float] | np.ndarray | None = None,
    include_timestamps: bool = False,
    tokens_per_second: float = QWEN25_VL_TOKENS_PER_SECOND,
) -> dict[str, Any]:
    """One SFT sample: prompt (with its video) + `record.target` + `<|im_end|>`, labels on the target only.

    video: a `vt_data.video.VideoClip`, or uint8 frames (T, H, W, 3) with `timestamps` (T,) seconds.
    processor_config: the video settings; its family (vt_model.families) preprocesses, lays out the
    prompt and computes the positions (default: Qwen2.5-VL's paper settings).
    Returns input_ids, attention_mask, labels, mm_token_type_ids (L,), position_ids (3, L),
    pixel_values_videos (N, D), the family's per-video keys (Qwen2.5-VL: video_grid_thw (1, 3),
    second_per_grid_ts (1,)), and the bookkeeping fields key, num_frames, num_video_tokens,
    num_prompt_tokens (text + video), num_target_tokens.
    """
    processor_config = processor_config or VideoProcessorConfig()
    family = get_family(processor_config.family)
    ids = special_ids(tokenizer)
    target = record.target
    if not target.strip():
        raise ValueError(f"record {record_label(record)} has no SFT target (empty process and solution)")
    target_ids = tokenize(tokenizer, target + IM_END)  # the closing <|im_end|> is trained too
    if target_ids[-1] != ids.im_end:
        raise ValueError(f"record {record_label(record)}: the target did not tokenize to end in {IM_END}")

    frames, ts = _frames_and_timestamps(video, timestamps)
    attempts: list[str] = []
    while True:
        video_inputs = family.preprocess_video(frames, ts, processor_config)
        prompt = encode_prompt(tokenizer, record, video_inputs, template, timestamps=ts,
                               include_timestamps=include_timestamps)
        n_prompt, n_target = prompt["input_ids"].numel(), len(target_ids)
        total = n_prompt + n_target
        if budget is None or total <= budget.max_length:
            break
        counts = (f"{total} tokens = {n_prompt - video_inputs.num_video_tokens} prompt text + "
                  f"{video_inputs.num_video_tokens} video ({len(frames)} frames, grid "
                  f"{video_inputs.video_grid_thw.flatten().tolist()}) + {n_target} target")
        attempts.append(counts)
        if budget.on_overflow == "error":
            raise TokenBudgetError(f"record {record_label(record)} exceeds max_length={budget.max_length}: "
                                   f"{counts}; vision tokens are never truncated (use on_overflow="
                                   f"'reduce_frames' or raise max_length)")
        if len(frames) <= budget.min_frames:
            raise TokenBudgetError(f"record {record_label(record)} does not fit max_length="
                                   f"{budget.max_length} even at min_frames={budget.min_frames}: "
                                   + " -> ".join(attempts))
        keep = subsample_frames(len(frames), max(budget.min_frames, len(frames) // 2))
        frames, ts = frames[keep], ts[keep]

    input_ids = torch.cat([prompt["input_ids"], torch.tensor(target_ids, dtype=torch.long)])  # (L,)
    labels = input_ids.clone()
    labels[:n_prompt] = IGNORE_INDEX
    # Belt and braces: whatever the target text holds, no vision or pad id is ever a label.
    labels[torch.isin(labels, torch.tensor([*ids.vision, ids.pad]))] = IGNORE_INDEX
    mm_types = torch.cat([prompt["mm_token_type_ids"], torch.zeros(n_target, dtype=torch.long)])
    if int(mm_types[n_prompt:].count_nonzero()):
        raise ValueError(f"record {record_label(record)}: the target contains image/video placeholder tokens")
    video = {key: prompt[key] for key in PER_VIDEO_KEYS if key in prompt}  # (1, 3) grid, ...
    position_ids = example_positions(input_ids, video, tokenizer, processor_config,
                                     tokens_per_second=tokens_per_second)
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "labels": labels,
        "mm_token_type_ids": mm_types,
        "position_ids": position_ids,  # (3, L)
        "pixel_values_videos": prompt["pixel_values_videos"],  # (N, D)
        **video,  # video_grid_thw (1, 3), Qwen2.5-VL's second_per_grid_ts (1,)
        "key": record.key,
        "num_frames": len(frames),
        "num_video_tokens": video_inputs.num_video_tokens,
        "num_prompt_tokens": n_prompt,
        "num_target_tokens": n_target,
    }


def _pad(seqs: Sequence[torch.Tensor], value: int, side: str) -> torch.Tensor:
    """Pad 1-D (L_i,) or 2-D (C, L_i) tensors along the last axis -> (B, L) or (C, B, L)."""
    length = max(s.shape[-1] for s in seqs)
    out = []
    for s in seqs:
        pad = length - s.shape[-1]
        fill = s.new_full((*s.shape[:-1], pad), value)
        out.append(torch.cat([s, fill] if side == "right" else [fill, s], dim=-1))
    return torch.stack(out, dim=-2)


def _check_one_video(examples: Sequence[Mapping[str, Any]]) -> None:
    for i, ex in enumerate(examples):
        if ex["video_grid_thw"].reshape(-1, 3).shape[0] != 1:
            raise ValueError(f"example {i} has {ex['video_grid_thw'].shape[0]} videos; one per sample "
                             "expected")


def video_keys(batch: Mapping[str, Any]) -> tuple[str, ...]:
    """The video keys an encoded example or a collated batch holds: pixel_values_videos and its family's
    per-video keys (none for a text-only prompt)."""
    if "pixel_values_videos" not in batch:
        return ()
    return ("pixel_values_videos", *(key for key in PER_VIDEO_KEYS if key in batch))


def _collate_video(examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    """pixel_values_videos (sum N_i, D) in sample order, then the per-video keys: video_grid_thw (B, 3),
    (Qwen2.5-VL) second_per_grid_ts (B,) float32."""
    _check_one_video(examples)
    batch = {"pixel_values_videos": torch.cat([ex["pixel_values_videos"] for ex in examples], dim=0)}
    for key in video_keys(examples[0])[1:]:
        rows = [ex[key].reshape(1, *ex[key].shape[1:]) if ex[key].ndim > 1 else ex[key].reshape(1)
                for ex in examples]
        batch[key] = torch.cat(rows, dim=0)
        if batch[key].is_floating_point():
            batch[key] = batch[key].float()
    return batch


def collate_sft(examples: Sequence[Mapping[str, Any]], pad_token_id: int) -> dict[str, Any]:
    """Right-padded SFT batch.

    input_ids, attention_mask, labels, mm_token_type_ids (B, L); position_ids (3, B, L);
    pixel_values_videos (sum N_i, 1176); video_grid_thw (B, 3); second_per_grid_ts (B,);
    plus `keys` and `num_frames` lists (not model inputs: use `model_inputs(batch)`).
    """
    if not examples:
        raise ValueError("no examples to collate")
    batch: dict[str, Any] = {
        "input_ids": _pad([ex["input_ids"] for ex in examples], pad_token_id, "right"),
        "attention_mask": _pad([ex["attention_mask"] for ex in examples], 0, "right"),
        "labels": _pad([ex["labels"] for ex in examples], IGNORE_INDEX, "right"),
        "mm_token_type_ids": _pad([ex["mm_token_type_ids"] for ex in examples], 0, "right"),
        "position_ids": _pad([ex["position_ids"] for ex in examples], POSITION_PAD, "right"),
    }
    batch.update(_collate_video(examples))
    batch["keys"] = [ex.get("key") for ex in examples]
    batch["num_frames"] = [ex.get("num_frames") for ex in examples]
    return batch


def collate_prompts(prompts: Sequence[Mapping[str, Any]], pad_token_id: int) -> dict[str, Any]:
    """Left-padded prompt batch for generation (from `prompts.encode_prompt` outputs).

    input_ids, attention_mask, mm_token_type_ids (B, L); pixel_values_videos, video_grid_thw (B, 3),
    second_per_grid_ts (B,). No position ids: generation computes them with the model's config.
    Text-only prompts (no `pixel_values_videos`, e.g. the hindsight checker's) collate without video
    keys; a batch must not mix the two kinds.
    """
    if not prompts:
        raise ValueError("no prompts to collate")
    batch: dict[str, Any] = {
        "input_ids": _pad([p["input_ids"] for p in prompts], pad_token_id, "left"),
        "attention_mask": _pad([p["attention_mask"] for p in prompts], 0, "left"),
        "mm_token_type_ids": _pad([p["mm_token_type_ids"] for p in prompts], 0, "left"),
    }
    with_video = ["pixel_values_videos" in p for p in prompts]
    if any(with_video) and not all(with_video):
        raise ValueError("a prompt batch mixes prompts with and without a video")
    if all(with_video):
        batch.update(_collate_video(prompts))
    return batch


def model_inputs(batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The model-forward kwargs of a collated batch (drops bookkeeping such as `keys`)."""
    return {k: batch[k] for k in MODEL_KEYS if k in batch}


__all__ = [
    "IGNORE_INDEX", "MODEL_KEYS", "TokenBudget", "TokenBudgetError", "encode_sft_example", "collate_sft",
    "collate_prompts", "model_inputs", "subsample_frames", "example_positions", "check_position_config",
    "PER_VIDEO_KEYS", "video_keys",
]
