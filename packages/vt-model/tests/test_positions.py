"""3-D M-RoPE position ids: the original Qwen2.5-VL rule against hand-computed ids, padding, errors, the
installed transformers' `get_rope_index` (which differs after a video), and proof that the ids we pass
are the ids the model uses, in forward and in generate."""

from __future__ import annotations

import pytest
import torch

from vt_model.positions import model_inputs_positions, rope_index

# Fake ids for the hand-computed cases: text tokens are small numbers.
VIDEO, IMAGE, VSTART, VEND = 50, 51, 52, 53
KW = dict(video_token_id=VIDEO, image_token_id=IMAGE, vision_start_token_id=VSTART, spatial_merge_size=2,
          tokens_per_second=2)


def _ids(*parts) -> torch.Tensor:
    out: list[int] = []
    for p in parts:
        out.extend(p if isinstance(p, list) else [p])
    return torch.tensor([out])


# text "10 11 <vs>", a video of grid (t, h, w) = (3, 4, 4) patches = 3 x 2 x 2 merged tokens, "<ve> 12 13"
TEXT_VIDEO_TEXT = _ids(10, 11, VSTART, [VIDEO] * 12, VEND, 12, 13)
GRID = torch.tensor([[3, 4, 4]])

# By the rule: text 0, 1, 2; the block starts at 3; temporal id = 3 + floor(t * s * 2) for t = 0, 1, 2;
# height / width ids = 3 + row / col of the 2 x 2 merged grid; text resumes at max id in block + 1.
EXPECTED_1S = torch.tensor([
    # t  (s = 1.0 s per grid step -> steps of 2)
    [0, 1, 2, 3, 3, 3, 3, 5, 5, 5, 5, 7, 7, 7, 7, 8, 9, 10],
    # h
    [0, 1, 2, 3, 3, 4, 4, 3, 3, 4, 4, 3, 3, 4, 4, 8, 9, 10],
    # w
    [0, 1, 2, 3, 4, 3, 4, 3, 4, 3, 4, 3, 4, 3, 4, 8, 9, 10],
]).unsqueeze(1)  # (3, 1, 18)
EXPECTED_HALF_S = torch.tensor([
    # t  (s = 0.5 -> steps of 1); the block's max id is 5 (temporal), so text resumes at 6
    [0, 1, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 6, 7, 8],
    [0, 1, 2, 3, 3, 4, 4, 3, 3, 4, 4, 3, 3, 4, 4, 6, 7, 8],
    [0, 1, 2, 3, 4, 3, 4, 3, 4, 3, 4, 3, 4, 3, 4, 6, 7, 8],
]).unsqueeze(1)


def test_text_video_text_golden():
    pos, deltas = rope_index(TEXT_VIDEO_TEXT, None, GRID, torch.tensor([1.0]), **KW)
    assert pos.shape == (3, 1, 18) and pos.dtype == torch.long
    assert torch.equal(pos, EXPECTED_1S)
    assert deltas.tolist() == [[10 + 1 - 18]]
    pos, deltas = rope_index(TEXT_VIDEO_TEXT, None, GRID, torch.tensor([0.5]), **KW)
    assert torch.equal(pos, EXPECTED_HALF_S)
    assert deltas.tolist() == [[8 + 1 - 18]]


def test_temporal_ids_truncate_like_the_original():
    # 0.6 s per step * 2 tokens/s: t * 1.2 -> 0, 1 (1.2), 2 (2.4), 3 (3.6), 4 (4.8)
    ids = _ids(VSTART, [VIDEO] * 5, VEND)
    pos, _ = rope_index(ids, None, torch.tensor([[5, 2, 2]]), torch.tensor([0.6]), **KW)
    assert pos[0, 0, 1:6].tolist() == [1, 2, 3, 4, 5]
    # a high sampling rate truncates steps to 0 (transformers PR #48669): 0.2 * 2 = 0.4 per step
    pos, _ = rope_index(ids, None, torch.tensor([[5, 2, 2]]), torch.tensor([0.2]), **KW)
    assert pos[0, 0, 1:6].tolist() == [1, 1, 1, 2, 2]


def test_images_get_one_temporal_id_and_no_time_scaling():
    ids = _ids(10, VSTART, [IMAGE] * 4, VEND, 11)
    pos, deltas = rope_index(ids, None, None, None, image_grid_thw=torch.tensor([[1, 4, 4]]), **KW)
    assert pos[:, 0].tolist() == [
        [0, 1, 2, 2, 2, 2, 4, 5],
        [0, 1, 2, 2, 3, 3, 4, 5],
        [0, 1, 2, 3, 2, 3, 4, 5],
    ]
    assert deltas.tolist() == [[6 - 8]]


def test_right_and_left_padding_in_a_batch():
    short = [10, VSTART, *[VIDEO] * 8, VEND, 12]  # grid (2, 4, 4): 8 tokens
    # by the rule: 0, 1; block at 2: t 2 / 4 (s = 1.0), h 2,2,3,3, w 2,3,2,3; max 4; then 5, 6
    short_pos = torch.tensor([
        [0, 1, 2, 2, 2, 2, 4, 4, 4, 4, 5, 6],
        [0, 1, 2, 2, 3, 3, 2, 2, 3, 3, 5, 6],
        [0, 1, 2, 3, 2, 3, 2, 3, 2, 3, 5, 6],
    ])
    grids = torch.tensor([[3, 4, 4], [2, 4, 4]])
    seconds = torch.tensor([1.0, 1.0])
    pad = [0] * 6
    for side in ("right", "left"):
        row = short + pad if side == "right" else pad + short
        mask = [1] * 12 + [0] * 6 if side == "right" else [0] * 6 + [1] * 12
        ids = torch.cat([TEXT_VIDEO_TEXT, torch.tensor([row])])
        attention = torch.tensor([[1] * 18, mask])
        pos, deltas = rope_index(ids, attention, grids, seconds, **KW)
        assert torch.equal(pos[:, 0], EXPECTED_1S[:, 0])
        real = attention[1].bool()
        assert torch.equal(pos[:, 1, real], short_pos)
        assert (pos[:, 1, ~real] == 1).all()  # padding gets 1, as transformers does
        assert deltas.tolist() == [[10 + 1 - 18], [6 + 1 - 18]]


def test_text_only_rows_and_errors():
    pos, deltas = rope_index(torch.tensor([[1, 2, 3]]), None, None, None, **KW)
    assert pos[:, 0].tolist() == [[0, 1, 2]] * 3 and deltas.tolist() == [[0]]
    with pytest.raises(ValueError, match="more video blocks"):
        rope_index(TEXT_VIDEO_TEXT, None, None, None, **KW)
    with pytest.raises(ValueError, match="expand each placeholder"):
        rope_index(_ids(VSTART, VIDEO, VEND), None, GRID, None, **KW)
    with pytest.raises(ValueError, match="grids list"):
        rope_index(TEXT_VIDEO_TEXT, None, torch.cat([GRID, GRID]), torch.tensor([1.0, 1.0]), **KW)
    with pytest.raises(ValueError, match="vision_start"):
        rope_index(_ids(10, [VIDEO] * 12, 11), None, GRID, None, **KW)
    with pytest.raises(ValueError, match="second_per_grid_ts"):
        rope_index(TEXT_VIDEO_TEXT, None, GRID, torch.tensor([1.0, 2.0]), **KW)


# ------------------------------------------------------------------------------------ vs transformers


def test_installed_transformers_get_rope_index_differs_only_after_the_video(tiny_model):
    """transformers >= 5.3 resumes text after a video at start + max(h, w) / merge (5 here) instead of
    the block's max id + 1 (8): stack.md's text-after-video trap. Video and prefix ids agree."""
    config = tiny_model.config
    ids = TEXT_VIDEO_TEXT.clone()
    for fake, real in ((VIDEO, config.video_token_id), (VSTART, config.vision_start_token_id),
                       (VEND, config.vision_end_token_id)):
        ids[TEXT_VIDEO_TEXT == fake] = real
    kinds = 2 * (ids == config.video_token_id).long()
    hf, hf_deltas = tiny_model.model.get_rope_index(
        ids, mm_token_type_ids=kinds, video_grid_thw=GRID, second_per_grid_ts=torch.tensor([1.0]),
        attention_mask=torch.ones_like(ids))
    ours = model_inputs_positions(config, {"input_ids": ids, "video_grid_thw": GRID,
                                           "second_per_grid_ts": torch.tensor([1.0])})["position_ids"]
    assert torch.equal(ours, EXPECTED_1S)
    assert torch.equal(hf[:, :, :15], ours[:, :, :15])  # text before and the video block itself
    if not torch.equal(hf, ours):  # transformers 5.23: after the block, 5, 6, 7 instead of 8, 9, 10
        assert hf[:, 0, 15:].tolist() == [[5, 6, 7]] * 3
        assert hf_deltas.tolist() == [[7 + 1 - 18]]


def _ours(model, batch):
    return model_inputs_positions(model.config, batch)["position_ids"]


@torch.no_grad()
def test_passed_position_ids_are_the_ones_the_model_uses(
    tiny_model, tiny_tokenizer, small_video, video_batch
):
    batch = video_batch(tiny_tokenizer, small_video(num_frames=4))  # grid [2, 4, 4], 1 fps: s = 2.0
    model = tiny_model
    ours = _ours(model, batch)
    theirs, _ = model.model.get_rope_index(batch["input_ids"], **{k: batch[k] for k in (
        "mm_token_type_ids", "video_grid_thw", "second_per_grid_ts", "attention_mask")})
    assert not torch.equal(ours, theirs), "this prompt should expose the transformers 5.x difference"
    default = model(**batch).logits  # transformers computes its own ids (mm_token_type_ids is passed)
    with_theirs = model(**batch, position_ids=theirs).logits
    with_ours = model(**batch, position_ids=ours).logits
    torch.testing.assert_close(with_theirs, default, rtol=0, atol=1e-6)  # passing ids replaces theirs...
    assert (with_ours - default).abs().max() > 1e-4  # ...so ours change the output


@torch.no_grad()
def test_generate_continues_our_positions(tiny_model, tiny_tokenizer, small_video, video_batch):
    """generate() extends passed position ids by +1 per new token (no rope_deltas needed): its logits
    equal a full forward over prompt + generated tokens with ids from `rope_index` on the whole sequence."""
    model = tiny_model
    batch = video_batch(tiny_tokenizer, small_video(num_frames=4, seed=1))
    prompt_len = batch["input_ids"].shape[1]
    out = model.generate(**batch, **model_inputs_positions(model.config, batch), max_new_tokens=4,
                         do_sample=False, output_logits=True, return_dict_in_generate=True)
    sequence = out.sequences  # (1, prompt_len + n)
    steps = torch.stack(out.logits, dim=1)  # (1, n, V)
    n = steps.shape[1]
    new_types = torch.zeros(1, sequence.shape[1] - prompt_len, dtype=torch.long)  # generated text: 0
    full = dict(batch, input_ids=sequence, attention_mask=torch.ones_like(sequence),
                mm_token_type_ids=torch.cat([batch["mm_token_type_ids"], new_types], 1))
    pos_full = _ours(model, full)
    logits = model(**full, position_ids=pos_full).logits[:, prompt_len - 1 : prompt_len - 1 + n]
    assert n >= 1
    torch.testing.assert_close(steps, logits, rtol=1e-4, atol=1e-4)
    # sensitivity: transformers' own ids for the same sequence give other logits
    theirs, _ = model.model.get_rope_index(sequence, **{k: full[k] for k in (
        "mm_token_type_ids", "video_grid_thw", "second_per_grid_ts", "attention_mask")})
    other = model(**full, position_ids=theirs).logits[:, prompt_len - 1 : prompt_len - 1 + n]
    assert (other - steps).abs().max() > 1e-4
