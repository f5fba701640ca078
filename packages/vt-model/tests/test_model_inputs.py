"""What a batch must carry to reach the model: `mm_token_type_ids` (without it transformers 5.x silently
uses 1-D text positions for the vision tokens) and `second_per_grid_ts` (it sets the temporal M-RoPE
step). The tiny model is written by vt_model.tiny and loaded by vt_model.loading (conftest fixtures);
the input is one text-video-text prompt from our preprocessing with <|video_pad|> expanded."""

from __future__ import annotations

import torch

from vt_model.positions import model_inputs_positions


@torch.no_grad()
def test_mm_token_type_ids_and_second_per_grid_ts_reach_the_model(
    tiny_model, tiny_tokenizer, small_video, video_batch
):
    video = small_video(num_frames=4)  # grid [2, 4, 4]: 2 temporal steps, 8 video tokens, 1 fps
    batch = video_batch(tiny_tokenizer, video)
    ids = batch["input_ids"][0]
    assert int((ids == tiny_model.config.video_token_id).sum()) == video.num_video_tokens == 8
    assert batch["mm_token_type_ids"][0].tolist() == [2 if t == tiny_model.config.video_token_id else 0
                                                      for t in ids.tolist()]
    assert batch["second_per_grid_ts"].tolist() == [2.0]

    logits = tiny_model(**batch).logits  # (1, L, V)
    without_types = tiny_model(**{k: v for k, v in batch.items() if k != "mm_token_type_ids"}).logits
    assert (logits - without_types).abs().max() > 1e-4, "mm_token_type_ids did not change the positions"

    slower = dict(batch, second_per_grid_ts=torch.tensor([1.0]))  # temporal step 2 ids instead of 4
    assert (logits - tiny_model(**slower).logits).abs().max() > 1e-4, "second_per_grid_ts had no effect"

    # with our position ids passed, the output no longer depends on transformers' own inference...
    ours = model_inputs_positions(tiny_model.config, batch)
    a = tiny_model(**batch, **ours).logits
    b = tiny_model(**{k: v for k, v in batch.items() if k != "mm_token_type_ids"}, **ours).logits
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    # ...but still on second_per_grid_ts, through our rule
    ours_slower = model_inputs_positions(tiny_model.config, slower)
    assert not torch.equal(ours["position_ids"], ours_slower["position_ids"])
