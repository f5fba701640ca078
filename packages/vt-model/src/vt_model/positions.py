"""3-D M-RoPE position ids for Qwen2.5-VL by the rule the released checkpoints were trained with.

The rule (Qwen2.5-VL's original `get_rope_index`, transformers 4.x):
  * text tokens get equal (t, h, w) ids that increase by 1 per token;
  * a vision block with merged grid (t, h, w) starting at id `start` (= 1 + the last id before it) gets
      temporal id = start + floor(t_index * second_per_grid_ts * tokens_per_second)   (videos)
      temporal id = start                                                              (images)
      height id   = start + row,   width id = start + column   of the merged grid;
  * the text after a block continues at (the largest id used in the block) + 1.

transformers >= 5.3 (seen in 5.23's `Qwen2_5_VLModel.get_rope_index`) advances the text after a vision
block by only max(h, w) of the merged grid, so for a video whose temporal ids reach further than its
spatial ones the following text overlaps the video's temporal range (shared/docs/stack.md, "text-after-
video position trap"; huggingface/transformers#45381). Images are unaffected. We therefore compute the
ids here and pass them to the model as `position_ids`.

How the model takes them (read in transformers 5.23, modeling_qwen2_5_vl.py):
  * forward: `position_ids` of shape (3, B, L) is used as is (`Qwen2_5_VLModel.forward` only computes its
    own when position_ids is None). A (4, B, L) tensor is also accepted, row 0 being 1-D text positions
    used only to build packed-sequence masks; we return the plain 3-row form and let the attention mask
    drive masking.
  * generate: when `position_ids` is in the kwargs, `_prepare_position_ids_for_generation` (which would
    call the 5.x `get_rope_index` and cache `rope_deltas`) is skipped, and after every step
    `_update_model_kwargs_for_generation` appends `position_ids[..., -1:] + 1` to each of the three rows.
    Our prompts end in text, whose three ids are equal, so new tokens continue at last id + 1, i.e.
    cache position + rope_delta: no `rope_deltas` needs to be passed or stored. `rope_deltas` (returned
    by `rope_index`) is only for hand-written decode loops that feed one token at a time without
    position ids: their position is cache_position + rope_delta, cache_position counting padding.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


def _vision_block_ids(
    start: int,
    grid_thw: torch.Tensor,
    spatial_merge_size: int,
    second_per_grid_t: torch.Tensor,
    tokens_per_second: float,
) -> torch.Tensor:
    """Ids (3, t * h * w) for one vision block whose first token would get id `start`.

    grid_thw is the processor grid in patches; h and w are divided by the merge size. The temporal
    index is scaled in float32 and truncated, in the order the original code used
    ((t_index * second_per_grid_t) * tokens_per_second, then .long()), so truncation matches it.
    """
    t = int(grid_thw[0])
    h = int(grid_thw[1]) // spatial_merge_size
    w = int(grid_thw[2]) // spatial_merge_size
    t_range = torch.arange(t).view(-1, 1).expand(-1, h * w)  # (t, h*w) int64
    t_index = (t_range * second_per_grid_t * tokens_per_second).long().flatten()  # (t*h*w,) float32 -> int
    h_index = torch.arange(h).view(1, -1, 1).expand(t, -1, w).flatten()  # (t*h*w,)
    w_index = torch.arange(w).view(1, 1, -1).expand(t, h, -1).flatten()  # (t*h*w,)
    return torch.stack([t_index, h_index, w_index]) + start  # (3, t*h*w)


def rope_index(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    video_grid_thw: torch.Tensor | None,
    second_per_grid_ts: torch.Tensor | None,
    *,
    video_token_id: int,
    image_token_id: int,
    vision_start_token_id: int | None = None,
    spatial_merge_size: int = 2,
    tokens_per_second: float = 2,
    image_grid_thw: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids (B, L) -> (position_ids (3, B, L) int64, rope_deltas (B, 1) int64).

    attention_mask (B, L): 1 for real tokens, 0 for padding (left or right); None = no padding.
    video_grid_thw (V, 3) and second_per_grid_ts (V,) list the batch's videos in order of appearance
    (sample by sample); image_grid_thw (I, 3) likewise. second_per_grid_ts None means 1.0 s per step.
    Each vision block is a run of grid_t * grid_h * grid_w / merge**2 image or video tokens; if
    vision_start_token_id is given, each block must follow one (a malformed prompt fails loudly).
    Padding positions get id 1 (as transformers does); rope_deltas = max id + 1 - L (padded length),
    so that a token appended at cache position L gets id max + 1.
    """
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be (B, L), got {tuple(input_ids.shape)}")
    batch, length = input_ids.shape
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask {tuple(attention_mask.shape)} != input_ids {tuple(input_ids.shape)}"
        )
    videos = [] if video_grid_thw is None else list(video_grid_thw.reshape(-1, 3).cpu())
    images = [] if image_grid_thw is None else list(image_grid_thw.reshape(-1, 3).cpu())
    if second_per_grid_ts is None:
        seconds = [torch.tensor(1.0)] * len(videos)
    else:
        # float32 like the processor's tensor, so float products truncate as in the original code
        seconds = list(torch.as_tensor(second_per_grid_ts, dtype=torch.float32).reshape(-1).cpu())
        if len(seconds) != len(videos):
            raise ValueError(f"{len(seconds)} second_per_grid_ts for {len(videos)} videos")
    merge_area = spatial_merge_size**2

    position_ids = torch.ones(3, batch, length, dtype=torch.long)  # (3, B, L); padding stays 1
    deltas = torch.zeros(batch, 1, dtype=torch.long)  # (B, 1)
    next_video = next_image = 0
    for b in range(batch):
        keep = attention_mask[b].bool().cpu()
        ids = input_ids[b].cpu()[keep]  # (L_b,) real tokens only
        pieces: list[torch.Tensor] = []  # each (3, n)
        next_id = 0  # id the next token would get
        i, n_tokens = 0, ids.numel()
        is_vision = (ids == video_token_id) | (ids == image_token_id)
        while i < n_tokens:
            if not bool(is_vision[i]):
                # text run up to the next vision token: ids next_id, next_id + 1, ...
                rest = is_vision[i:].nonzero()
                end = i + int(rest[0]) if rest.numel() else n_tokens
                pieces.append(torch.arange(next_id, next_id + end - i).view(1, -1).expand(3, -1))
                next_id += end - i
                i = end
                continue
            token = int(ids[i])
            if vision_start_token_id is not None and (i == 0 or int(ids[i - 1]) != vision_start_token_id):
                raise ValueError(f"sample {b}: vision token at {i} does not follow <|vision_start|>")
            if token == video_token_id:
                if next_video >= len(videos):
                    raise ValueError("more video blocks in input_ids than rows in video_grid_thw")
                grid, second_per_grid_t = videos[next_video], seconds[next_video]
                next_video += 1
            else:
                if next_image >= len(images):
                    raise ValueError("more image blocks in input_ids than rows in image_grid_thw")
                grid, second_per_grid_t = images[next_image], torch.tensor(0.0)  # images: one temporal id
                next_image += 1
            n_block = int(grid.prod()) // merge_area
            block = ids[i : i + n_block]
            if block.numel() != n_block or bool((block != token).any()):
                raise ValueError(
                    f"sample {b}: vision block at {i} should be {n_block} copies of token {token} "
                    f"(grid {grid.tolist()}); expand each placeholder to its token count first"
                )
            vision = _vision_block_ids(  # (3, n_block)
                next_id, grid, spatial_merge_size, second_per_grid_t, tokens_per_second
            )
            pieces.append(vision)
            next_id = int(vision.max()) + 1  # the original rule: continue after the largest id
            i += n_block
        if pieces:
            positions = torch.cat(pieces, dim=1)  # (3, L_b)
            position_ids[:, b, keep] = positions
            deltas[b, 0] = int(positions.max()) + 1 - length
        else:
            deltas[b, 0] = -length  # an all-padding row
    if next_video != len(videos) or next_image != len(images):
        raise ValueError(
            f"input_ids hold {next_video} video / {next_image} image blocks but the grids list "
            f"{len(videos)} / {len(images)}"
        )
    return position_ids.to(input_ids.device), deltas.to(input_ids.device)


def _get(config: Any, name: str) -> Any:
    return config[name] if isinstance(config, Mapping) else getattr(config, name)


def model_inputs_positions(model_config: Any, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The extra kwargs that give a Qwen2.5-VL forward / generate call the original position ids.

    model_config: the model's `Qwen2_5_VLConfig` (token ids, vision_config.spatial_merge_size,
    vision_config.tokens_per_second). batch: a dict with input_ids (B, L), optional attention_mask,
    video_grid_thw, second_per_grid_ts, image_grid_thw. Returns {"position_ids": (3, B, L)}; no
    rope_deltas is needed (see the module docstring: generate extends passed position ids itself).
    """
    vision = _get(model_config, "vision_config")
    position_ids, _ = rope_index(
        batch["input_ids"],
        batch.get("attention_mask"),
        batch.get("video_grid_thw"),
        batch.get("second_per_grid_ts"),
        video_token_id=_get(model_config, "video_token_id"),
        image_token_id=_get(model_config, "image_token_id"),
        vision_start_token_id=_get(model_config, "vision_start_token_id"),
        spatial_merge_size=_get(vision, "spatial_merge_size"),
        tokens_per_second=_get(vision, "tokens_per_second"),
        image_grid_thw=batch.get("image_grid_thw"),
    )
    return {"position_ids": position_ids}
