"""The SFT loss pieces: positions and targets after the causal shift, the summed cross-entropy (equal to
the model's own mean loss × tokens), and the per-token normalisation over the whole optimizer step that
makes gradients independent of how the step's samples are split over ranks and micro-batches."""

from __future__ import annotations

import torch

from vt_model.training.batching import reduction_scale
from vt_sft.loss import (
    IGNORE_INDEX,
    label_token_count,
    predicted_positions,
    shifted_targets,
    step_normalised,
    token_loss_sum,
)


def test_positions_and_targets_follow_the_causal_shift():
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 5, 6, IGNORE_INDEX],
                           [IGNORE_INDEX, 7, 8, 9, 10]])
    keep = predicted_positions(labels)
    assert keep.tolist() == [[False, True, True, False, False], [True, True, True, True, False]]
    assert shifted_targets(labels, keep).tolist() == [5, 6, 7, 8, 9, 10]
    assert label_token_count(labels) == 6


def _toy_data(seed=0):
    """Four sequences whose label counts differ (3, 7, 1, 12), as SFT targets do."""
    g = torch.Generator().manual_seed(seed)
    sequences = []
    for n_labels in (3, 7, 1, 12):
        ids = torch.randint(0, 11, (n_labels + 4,), generator=g)
        labels = ids.clone()
        labels[:4] = IGNORE_INDEX
        sequences.append((ids, labels))
    return sequences


def _grad(model, batches, scale, step_tokens):
    """Sum over micro-batches of d(step_normalised loss), as backward accumulates them."""
    model.zero_grad()
    for seqs in batches:
        width = max(len(ids) for ids, _ in seqs)
        ids = torch.stack([torch.nn.functional.pad(i, (0, width - len(i))) for i, _ in seqs])
        labels = torch.stack([torch.nn.functional.pad(lab, (0, width - len(lab)), value=IGNORE_INDEX)
                              for _, lab in seqs])
        keep = predicted_positions(labels)
        loss_sum, _ = token_loss_sum(model(ids)[keep], shifted_targets(labels, keep))
        step_normalised(loss_sum, step_tokens, scale).backward()
    return model.weight.grad.clone()


def test_step_normalisation_is_layout_invariant_where_a_micro_batch_mean_is_not():
    torch.manual_seed(0)
    model = torch.nn.Embedding(11, 11)
    data = _toy_data()
    total = sum(label_token_count(lab[None]) for _, lab in data)
    # One process, one micro-batch of 4.
    reference = _grad(model, [data], scale=reduction_scale(1, 1), step_tokens=total)
    # Two ranks × two micro-batches of 1: each rank's backward is divided by DDP (÷2) and by Lightning's
    # accumulation (÷2); the scale undoes both, so averaging the ranks' gradients gives the reference.
    scale = reduction_scale(world_size=2, grad_accum=2)
    ranks = [_grad(model, [[data[0]], [data[1]]], scale, total),
             _grad(model, [[data[2]], [data[3]]], scale, total)]
    layout = sum(g / 2 for g in ranks) / 2
    torch.testing.assert_close(layout, reference, rtol=1e-5, atol=1e-7)
    # A per-micro-batch token mean (HF's loss) averaged the same way weights tokens differently.
    per_micro = sum(_grad(model, [[s]], scale=1.0, step_tokens=label_token_count(s[1][None]))
                    for s in data) / 4
    assert (per_micro - reference).abs().max() > 1e-3


def test_loss_sum_matches_the_models_own_mean_loss(sft):
    """On the tiny Qwen2.5-VL: logits at the kept positions only (logits_to_keep mask) give the same loss
    as the model's full-logits mean, times the token count."""
    from vt_data.shards.stream import StreamConfig, make_loader
    from vt_model.loading import load_model, load_tokenizer
    from vt_model.processing import VideoProcessorConfig
    from vt_sft.datamodule import SFTCollator
    from vt_sft.module import SFTModule

    tokenizer = load_tokenizer(sft.assets / "qwen25vl-tiny")
    collate = SFTCollator(tokenizer, VideoProcessorConfig(num_frames=4, min_pixels=3136), None, "direct")
    stream = StreamConfig(sft.assets / "synthetic" / "shards" / "train", num_frames=4, shuffle=False)
    loader = make_loader(stream, batch_size=3, collate_fn=collate)
    batch = next(iter(loader))
    module = SFTModule(load_model(sft.assets / "qwen25vl-tiny"), optimizer=torch.optim.SGD)
    with torch.no_grad():
        loss_sum, count = module.forward_loss_sum(batch)
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "mm_token_type_ids", "position_ids",
                                        "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")}
        reference = module.model(**inputs, labels=batch["labels"]).loss
    assert count == label_token_count(batch["labels"]) > 0
    torch.testing.assert_close(loss_sum / count, reference, rtol=1e-5, atol=1e-6)
