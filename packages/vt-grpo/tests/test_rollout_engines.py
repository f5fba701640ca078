"""The rollout engine seam: GRPOModule generates only through its rollout engine, tells it after every
step's updates that the weights changed, logs its stats; names and objects resolve as configs give them;
both prefill paths record the log-probs the loss recomputes."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from vt_grpo.module import GRPOModule
from vt_grpo.rollout_engines import HFRolloutEngine, RolloutEngine, build_rollout_engine
from vt_grpo.settings import GRPOSettings

SMALL = dict(prompts_per_step=2, generations_per_prompt=4, micro_batch_per_device=4,
             max_completion_length=12, max_prompt_draws_per_step=4, beta=0.0)


class CountingEngine(HFRolloutEngine):
    """The real hf engine, with a count of its calls (what the module asked of it, and when)."""

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def generate(self, model, tokenizer, prompts, settings):
        self.calls.append(f"generate:{len(prompts)}")
        return super().generate(model, tokenizer, prompts, settings)

    def after_update(self, model, wrapped=None):
        self.calls.append("after_update")

    def stats(self):
        return {"rollout_engine_calls": float(len(self.calls))}


def test_build_rollout_engine_resolves_names_and_refuses_others():
    assert isinstance(build_rollout_engine(None), HFRolloutEngine)
    assert build_rollout_engine("hf").prefill == "shared"
    engine = HFRolloutEngine(prefill="per_completion")
    assert build_rollout_engine(engine) is engine and isinstance(engine, RolloutEngine)
    built = build_rollout_engine(partial(HFRolloutEngine, prefill="per_completion"))  # a config's _partial_
    assert isinstance(built, HFRolloutEngine) and built.prefill == "per_completion"
    with pytest.raises(ValueError, match="unknown rollout engine 'sglang'"):
        build_rollout_engine("sglang")
    with pytest.raises(TypeError, match="a rollout engine needs"):
        build_rollout_engine(object())
    with pytest.raises(ValueError, match="prefill must be"):
        HFRolloutEngine(prefill="twice")


def _fit(grpo, engine, steps):
    from lightning.pytorch import Trainer

    from vt_grpo.datamodule import PromptDataModule
    from vt_model.loading import load_model, load_tokenizer
    from vt_model.processing import VideoProcessorConfig

    module = GRPOModule(
        load_model(grpo.sft_dir), optimizer=partial(torch.optim.AdamW, lr=1e-2),
        tokenizer=load_tokenizer(grpo.sft_dir), rewards={"format": 1.0, "accuracy": 1.0},
        settings=GRPOSettings(**SMALL, skip_zero_variance=False), rollout_engine=engine)
    datamodule = PromptDataModule(
        grpo.shards, tokenizer=partial(load_tokenizer, grpo.sft_dir),
        stream={"num_frames": grpo.frames, "max_frames": grpo.frames, "shuffle": False},
        processor=VideoProcessorConfig(num_frames=grpo.frames, max_frames=grpo.frames, min_pixels=3136),
        template=grpo.template)
    trainer = Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      limit_val_batches=0, use_distributed_sampler=False)
    metrics: list[dict] = []
    original = module._log_step
    module._log_step = lambda m: (metrics.append(dict(m)), original(m))[1]
    torch.manual_seed(0)
    trainer.fit(module, datamodule=datamodule)
    return module, metrics


def test_module_generates_only_through_its_engine_and_syncs_after_each_step(grpo):
    engine = CountingEngine()
    module, metrics = _fit(grpo, engine, steps=2)
    assert module.rollout_engine is engine  # an object is kept; a factory would be called in setup
    # per step: one round of 2 prompts (zero-variance skipping off), then one sync after the update
    assert engine.calls == ["generate:2", "after_update", "generate:2", "after_update"]
    assert [m["rollout_engine_calls"] for m in metrics] == [2.0, 4.0]


def test_both_prefill_paths_record_the_log_probs_the_loss_recomputes(grpo):
    """The one-prefill engine and the per-completion reference both train through the seam, and the
    log-probs each recorded while sampling equal the training model's recomputed ones (the logged gap
    stays at rounding level): the shared KV cache changes nothing the loss sees."""
    _, shared = _fit(grpo, HFRolloutEngine(prefill="shared"), steps=1)
    _, reference = _fit(grpo, HFRolloutEngine(prefill="per_completion"), steps=1)
    for metrics in (shared, reference):
        assert metrics[0]["rollout_logp_gap_max"] < 1e-4
