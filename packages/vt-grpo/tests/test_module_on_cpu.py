"""GRPOModule with the tiny SFT'd model in an in-process Trainer: the reference policy (LoRA: the
adapter disabled, no second copy; full fine-tuning: a frozen copy outside the checkpoint), and μ > 1
updates per rollout batch."""

from __future__ import annotations

import zlib
from functools import partial

import pytest
import torch

import vt_grpo.policy
from vt_grpo.module import GRPOModule
from vt_grpo.rewards import register_reward
from vt_grpo.settings import GRPOSettings

SMALL = dict(
    prompts_per_step=2,
    generations_per_prompt=4,
    micro_batch_per_device=4,
    max_completion_length=16,
    max_prompt_draws_per_step=4,
)


@register_reward("test_text_hash", 0.0, 1.0)
def text_hash(completions, samples, **_):
    """A deterministic score that differs between different texts: every group of distinct completions
    has reward variance, so every step has a signal (a tiny model rarely earns the real rewards)."""
    return [zlib.crc32(c.encode("utf-8", "replace")) % 1000 / 999 for c in completions]


def _fit(grpo, module, steps, strategy="auto"):
    from lightning.pytorch import Trainer

    from vt_grpo.datamodule import PromptDataModule
    from vt_model.loading import load_tokenizer
    from vt_model.processing import VideoProcessorConfig

    datamodule = PromptDataModule(
        grpo.shards,
        tokenizer=partial(load_tokenizer, grpo.sft_dir),
        stream={"num_frames": grpo.frames, "max_frames": grpo.frames, "shuffle": False},
        processor=VideoProcessorConfig(num_frames=grpo.frames, max_frames=grpo.frames, min_pixels=3136),
        template=grpo.template,
    )
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        strategy=strategy,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        use_distributed_sampler=False,
    )
    torch.manual_seed(0)
    trainer.fit(module, datamodule=datamodule)
    return trainer, datamodule


def _module(grpo, model, lr=1e-2, **settings):
    from vt_model.loading import load_tokenizer

    return GRPOModule(
        model,
        optimizer=partial(torch.optim.AdamW, lr=lr),
        tokenizer=load_tokenizer(grpo.sft_dir),
        rewards={"test_text_hash": 1.0, "format": 1.0},
        settings=GRPOSettings(**{**SMALL, **settings}),
    )


def _logprobs(model, grpo):
    """Log-probs of fixed completions under `model` (one prompt, its first 2 completions)."""
    from vt_data.shards.stream import StreamConfig, make_loader
    from vt_grpo.datamodule import PromptCollator
    from vt_grpo.rewards import RewardSet
    from vt_grpo.rollout import build_rollout_batch, sample_groups, score_groups
    from vt_model.generation import sequence_logprobs
    from vt_model.loading import load_model, load_tokenizer
    from vt_model.processing import VideoProcessorConfig

    tokenizer = load_tokenizer(grpo.sft_dir)
    collator = PromptCollator(
        tokenizer,
        VideoProcessorConfig(num_frames=grpo.frames, max_frames=grpo.frames, min_pixels=3136),
        grpo.template,
    )
    loader = make_loader(
        StreamConfig(
            urls=grpo.shards,
            num_frames=grpo.frames,
            max_frames=grpo.frames,
            shuffle=False,
            rank=0,
            world_size=1,
        ),
        batch_size=1,
        collate_fn=collator,
    )
    item = next(iter(loader))["item"]
    torch.manual_seed(1)
    start = load_model(grpo.sft_dir).eval()
    groups = sample_groups(start, tokenizer, [item], GRPOSettings(**SMALL))
    score_groups(groups, RewardSet())
    batch = build_rollout_batch(groups, tokenizer.pad_token_id, start.config)
    with torch.no_grad():
        return sequence_logprobs(model, batch.inputs, batch.completion_mask)[
            batch.completion_mask
        ], sequence_logprobs(start, batch.inputs, batch.completion_mask)[batch.completion_mask]


def test_lora_reference_is_the_policy_with_its_adapter_disabled(grpo, monkeypatch):
    from vt_model.training.models import build_model

    model = build_model(grpo.sft_dir, lora={"r": 4, "alpha": 8})
    params = sum(p.numel() for p in model.parameters())
    module = _module(grpo, model)

    def no_copy(_model):
        raise AssertionError("a LoRA reference must not copy the model")

    monkeypatch.setattr(vt_grpo.policy, "frozen_copy", no_copy)
    trainer, _ = _fit(grpo, module, steps=1)
    assert trainer.global_step == 1
    assert module.reference is None and module.reference_policy.kind == "adapter_disabled"
    assert sum(p.numel() for p in module.parameters()) == params  # no second copy anywhere in the module
    assert all("lora_" in n for n, p in module.model.named_parameters() if p.requires_grad)

    policy, start = _logprobs(module.model, grpo)
    with module.model.disable_adapter():
        reference, _ = _logprobs(module.model, grpo)
    assert float((policy - reference).abs().max()) > 1e-4  # the update moved the policy away from π_ref
    torch.testing.assert_close(reference, start, atol=1e-5, rtol=0)  # π_ref is exactly the start policy


def test_lora_with_trainable_vision_refuses_the_adapter_reference(grpo):
    from vt_model.training.models import build_model

    module = _module(grpo, build_model(grpo.sft_dir, lora={"r": 4, "train_merger": True}))
    with pytest.raises(ValueError, match="nothing outside the adapter trains"):
        module.configure_model()


def test_full_fine_tuning_reference_is_a_frozen_copy_outside_the_checkpoint(grpo):
    from vt_model.loading import load_model
    from vt_model.training.models import build_model

    module = _module(grpo, partial(build_model, grpo.sft_dir), lr=1e-3)
    trainer, datamodule = _fit(grpo, module, steps=1)
    reference = module.reference
    assert reference is not None and module.reference_policy.kind == "copy"
    assert not any(p.requires_grad for p in reference.parameters()) and not reference.training
    assert all(key.startswith("model.") for key in module.state_dict())  # not saved with checkpoints
    start = load_model(grpo.sft_dir)
    for (name, r), (_, s) in zip(reference.named_parameters(), start.named_parameters(), strict=True):
        assert torch.equal(r, s), name  # the reference stays the start policy
    moved = [
        n
        for (n, p), (_, r) in zip(module.model.named_parameters(), reference.named_parameters(), strict=True)
        if not torch.equal(p.detach(), r)
    ]
    assert len(moved) > 0.5 * len(list(reference.parameters()))
    # One step: its prompts were drawn from the stream (at least the planned 2, at most the cap 4).
    assert 2 <= datamodule.source.drawn <= 4


def test_several_updates_per_rollout_batch(grpo):
    from vt_model.training.models import build_model

    module = _module(grpo, partial(build_model, grpo.sft_dir), lr=1e-3, updates_per_batch=2, beta=0.0)
    trainer, datamodule = _fit(grpo, module, steps=2)
    # One rollout batch fed two optimizer steps (global_step counts optimizer steps).
    assert trainer.global_step == 2 and module.reference is None
    assert 2 <= datamodule.source.drawn <= 4
    metrics = trainer.callback_metrics
    # The first update's ratio is exactly 1 (old log-probs = the same pass before any update).
    assert float(metrics["train/ratio_mean"]) == pytest.approx(1.0, abs=1e-6)

