"""GRPOModule: GRPO for a video LM as a LightningModule that only orchestrates the pure pieces.

One training step (manual optimisation: generation and updates alternate, and one rollout batch can
feed μ updates):

1. collect the step's groups (`vt_grpo.rollout.collect_groups`): draw prompts from the stream, sample
   G completions each with the video encoded once (`sample_groups`), score them (`score_groups`),
   skip zero-variance groups and draw more prompts up to the cap;
2. build the rollout batch (`build_rollout_batch`): identical video inputs and position ids for every
   later pass, group-relative advantages (`vt_grpo.advantages`);
3. without gradients: the reference policy's log-probs (β > 0) and, with μ > 1, the old policy's;
4. μ times: for each micro-batch, the policy's log-probs (`sequence_logprobs`, gradients flow) into
   `vt_grpo.loss.grpo_loss`, backward; then clip, optimizer step, scheduler step.

The module receives objects (style.md H4): the policy model (or a factory), optimizer and scheduler
factories, the tokenizer (or a factory), the `RewardSet` and the `GRPOSettings`.

Reference policy. β > 0 needs π_ref = the start policy. With LoRA it is the same model with the adapter
disabled (`with model.disable_adapter():`), so no second copy exists; that is only the start policy
while nothing outside the adapter trains, which is checked. With full fine-tuning it is a frozen deep
copy made in `setup`, before any update and before the strategy wraps the model (the policy is built
there too, not in `configure_model`: see `setup`). It is held outside the module's submodules, so it is
not in checkpoints (on resume it is rebuilt from the same start weights), not wrapped by DDP and not
partitioned by ZeRO: under ZeRO-3 every rank holds a whole frozen copy (bf16 7B: ~15 GB per GPU).

Loss scale across micro-batches and ranks. Every micro-batch's loss is its share of the whole step's
loss (`normaliser` = the step's sequences, tokens or N × max_len over all ranks), times the world size,
because DDP and DeepSpeed average gradients over ranks. Each micro-batch is its own backward (DDP syncs
each; under DeepSpeed each micro-batch is announced to the engine: `_start_micro_batch`).

Clipping. Lightning refuses `Trainer(gradient_clip_val=...)` with manual optimisation, so the module
clips to `settings.max_grad_norm` itself; under DeepSpeed (whose engine clips) the value is written
into the strategy's config as `gradient_clipping` in `setup`, before the engine exists.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import lightning.pytorch as pl
import torch

from vt_grpo.loss import grpo_loss
from vt_grpo.rewards import RewardSet
from vt_grpo.rollout import (
    DIAGNOSTICS,
    Collection,
    RolloutBatch,
    build_rollout_batch,
    collect_groups,
    policy_logprobs,
    sample_groups,
    score_groups,
)
from vt_grpo.settings import GRPOSettings
from vt_model.training.streaming import STREAM_STATE

log = logging.getLogger(__name__)

OptimizerFactory = Callable[[Any], torch.optim.Optimizer]
SchedulerFactory = Callable[..., Any]
REFERENCE_MODES = ("auto", "adapter_disabled", "copy")


def _is_peft(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "get_base_model")


def _partitioned(model) -> bool:
    """ZeRO-3 partitions parameters at construction (they carry DeepSpeed's `ds_id`)."""
    return any(hasattr(p, "ds_id") for p in model.parameters())


def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class GRPOModule(pl.LightningModule):
    """model: an nn.Module or a zero-argument factory returning one (a Qwen2.5-VL, possibly LoRA).
    optimizer: factory over the trainable parameters. scheduler: factory (optimizer, total_steps=...)
    stepped after every optimizer step, or None. tokenizer: a tokenizer or a zero-argument factory.
    rewards: a RewardSet or its weights mapping (None: the paper's accuracy + format).
    settings: GRPOSettings or its fields. reference: "auto" (LoRA: adapter disabled; else: a frozen
    copy), "adapter_disabled" or "copy". completions_to_show: completions returned per step for the
    readable table (vt_grpo.callbacks.CompletionTable).
    """

    def __init__(
        self,
        model: torch.nn.Module | Callable[[], torch.nn.Module],
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        *,
        tokenizer: Any,
        rewards: RewardSet | Mapping[str, float] | None = None,
        settings: GRPOSettings | Mapping[str, Any] | None = None,
        reference: str = "auto",
        completions_to_show: int = 4,
    ):
        super().__init__()
        self.automatic_optimization = False
        self._model_factory = None if isinstance(model, torch.nn.Module) else model
        self.model = model if isinstance(model, torch.nn.Module) else None
        self._tokenizer_factory = (
            tokenizer if callable(tokenizer) and not hasattr(tokenizer, "pad_token_id") else None
        )
        self.tokenizer = None if self._tokenizer_factory is not None else tokenizer
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.rewards = rewards if isinstance(rewards, RewardSet) else RewardSet(rewards)
        self.settings = (
            settings if isinstance(settings, GRPOSettings) else GRPOSettings(**dict(settings or {}))
        )
        if reference not in REFERENCE_MODES:
            raise ValueError(f"reference must be one of {REFERENCE_MODES}, got {reference!r}")
        self.reference_mode = reference
        self.completions_to_show = completions_to_show
        # The frozen reference lives in a plain list: not a submodule, so not in state_dict(), not moved,
        # wrapped or partitioned by the strategy (module docstring).
        self._frozen: list[torch.nn.Module] = []
        self._reference_kind: str | None = None

    # ------------------------------------------------------------------------------ model set-up
    def setup(self, stage: str) -> None:
        """Build the policy, the tokenizer and the reference here, before the strategy wraps anything.

        Not in `configure_model`: Lightning runs that inside DeepSpeed's `zero.Init` under ZeRO-3, where
        transformers' weight initialisation indexes the empty partitioned tensors and fails (and a
        partitioned model cannot be deep-copied into a frozen reference). Built here, the model is
        partitioned by `deepspeed.initialize` instead, and the reference copy stays whole.
        """
        self._build()
        # Runs before the strategy builds a DeepSpeed engine: its config is still open for clipping.
        config = getattr(self.trainer.strategy, "config", None) if self._trainer is not None else None
        if isinstance(config, dict) and self.settings.max_grad_norm:
            config.setdefault("gradient_clipping", float(self.settings.max_grad_norm))

    def configure_model(self) -> None:
        self._build()  # a no-op after setup; kept for use outside a Trainer

    def _build(self) -> None:
        if self.model is None:
            self.model = self._model_factory()
        if self.tokenizer is None:
            self.tokenizer = self._tokenizer_factory()
        if self._reference_kind is None:
            self._setup_reference()

    def _setup_reference(self) -> None:
        if not self.settings.uses_reference:
            self._reference_kind = "none"
            return
        mode = self.reference_mode
        if mode == "auto":
            mode = "adapter_disabled" if _is_peft(self.model) else "copy"
        if mode == "adapter_disabled":
            if not _is_peft(self.model):
                raise ValueError("reference='adapter_disabled' needs a LoRA (peft) model")
            drifting = [n for n, p in self.model.named_parameters() if p.requires_grad and "lora_" not in n]
            if drifting:
                raise ValueError(
                    "with LoRA the reference is the model with its adapter disabled, which is the start "
                    f"policy only if nothing outside the adapter trains; trainable non-adapter parameters: "
                    f"{drifting[:3]}{'...' if len(drifting) > 3 else ''}. Freeze them (LoRA train_vision/"
                    f"train_merger false) or set reference='copy'"
                )
        elif _partitioned(self.model):
            raise ValueError(
                "the policy is already partitioned by ZeRO-3 (built under zero.Init): a frozen "
                "copy cannot be made from it; pass the model as a factory"
            )
        else:
            self._frozen = [self._frozen_copy(self.model)]
        self._reference_kind = mode

    @staticmethod
    def _frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
        reference = copy.deepcopy(model)
        reference.requires_grad_(False)
        return reference.eval()

    @property
    def reference(self) -> torch.nn.Module | None:
        """The frozen reference model (full fine-tuning), None with LoRA (adapter disabled) or β = 0."""
        return self._frozen[0] if self._frozen else None

    def on_fit_start(self) -> None:
        if self.trainer.world_size != self.settings.world_size:
            raise RuntimeError(
                f"the trainer runs {self.trainer.world_size} processes but settings.world_size is "
                f"{self.settings.world_size}"
            )
        dtype = next(self.model.parameters()).dtype
        for reference in self._frozen:
            reference.to(self.device)
            if dtype.is_floating_point:
                reference.to(dtype)  # e.g. bf16-true converted the policy after the copy was made
        log.info("GRPO: %s; reference: %s", self.settings.describe(), self._reference_kind)

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        total_steps = (
            int(self.trainer.max_steps)
            if self.trainer.max_steps > 0
            else int(self.trainer.estimated_stepping_batches)
        )
        scheduler = self.scheduler_factory(optimizer, total_steps=total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------------------ helpers
    def _sync(self, tensor: torch.Tensor, op: str) -> torch.Tensor:
        if self.trainer.world_size == 1:
            return tensor
        return self.trainer.strategy.reduce(tensor.to(self.device), reduce_op=op).cpu()

    @property
    def _pad_id(self) -> int:
        from vt_model.prompts import special_ids

        return special_ids(self.tokenizer).pad

    def _rollout(self, items):
        with self._gathered_for_generation():
            groups = sample_groups(self.model, self.tokenizer, items, self.settings)
        score_groups(groups, self.rewards)
        return groups

    @contextlib.contextmanager
    def _gathered_for_generation(self):
        """Under ZeRO-3, the whole policy gathered on every rank and DeepSpeed's module hooks lifted while
        it generates (a no-op for every other strategy).

        Generation runs one forward per new token. With partitioned parameters each of them would
        all-gather every layer again (on 8 GPUs: the whole 7B model per token), and DeepSpeed's hooks,
        whose prefetch trace was recorded over a whole GRPO step, scan that trace on every module call
        (measured on the tiny model: a 32-completion rollout took 42 s instead of 0.4 s). So, as TRL's
        `ds3_gather_for_generation`: gather once, remove the hooks, generate on plain tensors, put the
        hooks back (DeepSpeed then re-records its trace) and re-partition. Costs one copy of the weights
        per GPU during the rollout (bf16 7B: ~15 GB). With the hooks lifted, generation runs no
        collective, so ranks need no synchronised decoding (`synced_gpus`). Uses DeepSpeed's
        `parameter_offload` object (`_remove_module_hooks` / `setup_zero_stage3_hooks`, the pair TRL
        relies on) and refuses to run without it.
        """
        params = [p for p in self.model.parameters() if hasattr(p, "ds_id")]
        if not params:
            yield
            return
        import deepspeed

        optimizer = getattr(self.trainer.model, "optimizer", None)
        offload = getattr(optimizer, "parameter_offload", None)
        if not (hasattr(offload, "_remove_module_hooks") and hasattr(offload, "setup_zero_stage3_hooks")):
            raise RuntimeError(
                "ZeRO-3 rollouts need DeepSpeed's parameter_offload hooks API "
                "(_remove_module_hooks / setup_zero_stage3_hooks), missing in this version"
            )
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            for param in params:
                param.ds_active_sub_modules.clear()
            offload._remove_module_hooks()
            try:
                yield
            finally:
                offload.setup_zero_stage3_hooks()

    @contextlib.contextmanager
    def _reference_context(self):
        """The model to run as π_ref: the frozen copy, or the policy with its adapter disabled."""
        if self._reference_kind == "adapter_disabled":
            with self.model.disable_adapter():
                yield self.model
        else:
            yield self.reference

    def _start_micro_batch(self, is_last: bool) -> None:
        """Tell DeepSpeed (a no-op for every other strategy) that a micro-batch starts, as its own
        `engine.forward()` would: several backward passes precede one optimizer step here, but Lightning
        calls the engine's forward once per training step and our passes run the model directly.

        * The accumulation boundary falls on the last micro-batch (DeepSpeed reduces and steps there).
        * `clear_backward_seen_flag()` is what `engine.forward()` runs first: it closes the previous
          micro-step, so ZeRO-3 accumulates the next backward into the gradient partitions instead of
          overwriting them (measured: without it, only the last micro-batch's gradient survived).
        """
        engine = self.trainer.model
        set_boundary = getattr(engine, "set_gradient_accumulation_boundary", None)
        if not callable(set_boundary):
            return
        set_boundary(is_last)
        clear = getattr(getattr(engine, "optimizer", None), "clear_backward_seen_flag", None)
        if callable(clear):
            clear()

    def _normaliser(self, batch: RolloutBatch) -> float:
        """The step's loss denominator over all ranks (vt_grpo.loss: Micro-batches and ranks)."""
        s = self.settings
        if s.aggregation == "seq_mean":
            return float(s.completions_per_step)
        if s.aggregation == "constant":
            return float(s.completions_per_step * s.max_completion_length)
        tokens = torch.tensor([float(batch.completion_mask.sum())], dtype=torch.float64)
        return float(self._sync(tokens, "sum")[0])

    def _clip_and_norm(self, optimizer) -> float:
        """Clip the gradients to max_grad_norm (not under DeepSpeed: its engine clips); the total norm
        before clipping, NaN where the gradients are not held in `.grad` (DeepSpeed)."""
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if not grads:
            return float("nan")
        norm = float(
            torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
        )
        if self.settings.max_grad_norm:
            self.clip_gradients(
                optimizer,
                gradient_clip_val=float(self.settings.max_grad_norm),
                gradient_clip_algorithm="norm",
            )
        return norm

    # ------------------------------------------------------------------------------ the step
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        s = self.settings
        source = batch["prompts"]
        policy = self.model
        started = time.perf_counter()

        # 1-2. rollouts (eval mode: no dropout; HF turns the KV cache off in train mode with checkpointing)
        policy.eval()
        collection = collect_groups(source.draw, self._rollout, s, sync=self._sync)
        rollout = build_rollout_batch(
            collection.groups, self._pad_id, _base(policy).config, advantage_scale=s.advantage_scale
        )
        micro_batches = rollout.split(s.micro_batch_per_device)
        generated = time.perf_counter()

        # 3. reference and old-policy log-probs, before any update
        with torch.no_grad():
            for mb in micro_batches:
                if s.uses_reference:
                    with self._reference_context() as reference:
                        mb.ref_logprobs = policy_logprobs(
                            reference, mb.inputs, mb.completion_mask, temperature=s.temperature
                        )[0]
                if s.updates_per_batch > 1:
                    mb.old_logprobs = policy_logprobs(
                        policy, mb.inputs, mb.completion_mask, temperature=s.temperature
                    )[0]
        referenced = time.perf_counter()

        # 4. μ updates over the micro-batches
        policy.train()
        optimizer = self.optimizers()
        scheduler = self.lr_schedulers()
        normaliser = self._normaliser(rollout)
        scale = float(self.trainer.world_size)  # DDP / DeepSpeed average gradients over ranks
        sums: dict[str, float] = {
            "loss": 0.0,
            "kl": 0.0,
            "clip_fraction": 0.0,
            "clip_fraction_low": 0.0,
            "clip_fraction_high": 0.0,
            "ratio_mean": 0.0,
            "entropy": 0.0,
            "logp_gap": 0.0,
            "tokens": 0.0,
        }
        grad_norms = []
        for update in range(s.updates_per_batch):
            update_loss = 0.0
            for i, mb in enumerate(micro_batches):
                self._start_micro_batch(i == len(micro_batches) - 1)
                first = update == 0
                logp, entropy = policy_logprobs(
                    policy, mb.inputs, mb.completion_mask, temperature=s.temperature, with_entropy=first
                )  # [n, L]
                mask = mb.completion_mask.to(logp.device)
                loss, metrics = grpo_loss(
                    logp,
                    None if mb.old_logprobs is None else mb.old_logprobs.to(logp.device),
                    None if mb.ref_logprobs is None else mb.ref_logprobs.to(logp.device),
                    mb.advantages.to(logp.device),
                    mask,
                    beta=s.beta,
                    eps_low=s.eps_low,
                    eps_high=s.eps_high,
                    aggregation=s.aggregation,
                    kl_estimator=s.kl_estimator,
                    max_len=s.max_completion_length,
                    normaliser=normaliser,
                )
                self.manual_backward(loss * scale)
                update_loss += float(loss.detach())
                if first:  # token-weighted metrics of the first update (the rollout policy)
                    tokens = float(mask.sum())
                    sums["tokens"] += tokens
                    for key in (
                        "kl",
                        "clip_fraction",
                        "clip_fraction_low",
                        "clip_fraction_high",
                        "ratio_mean",
                    ):
                        sums[key] += float(metrics[key]) * tokens
                    sums["entropy"] += float(entropy.sum())
                    if mb.rollout_logprobs is not None and s.temperature == 1.0:
                        # generate's log-probs vs the loss pass: equal up to rounding when the inputs are
                        # identical (method.md §10.10); a gap means rollout and loss see different inputs.
                        gap = (logp.detach() - mb.rollout_logprobs.to(logp.device)).abs()
                        sums["logp_gap"] = max(sums["logp_gap"], float(gap[mask].max()) if tokens else 0.0)
            grad_norms.append(self._clip_and_norm(optimizer))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if scheduler is not None:
                scheduler.step()
            sums["loss"] += update_loss
        policy.eval()
        finished = time.perf_counter()

        metrics = self._step_metrics(
            collection, rollout, sums, grad_norms, timings=(started, generated, referenced, finished)
        )
        self.log_dict(
            {f"train/{k}": v for k, v in metrics.items()},
            on_step=True,
            on_epoch=False,
            batch_size=1,
            sync_dist=self.trainer.world_size > 1,
        )
        self.log(
            "train/reward",
            metrics["reward_mean"],
            prog_bar=True,
            on_step=True,
            on_epoch=False,
            batch_size=1,
            sync_dist=self.trainer.world_size > 1,
        )
        return {
            "loss": torch.tensor(sums["loss"] / s.updates_per_batch),
            "step_end": True,
            "step_loss": sums["loss"] / s.updates_per_batch,
            "step_tokens": int(sums["tokens"]) * self.trainer.world_size,
            "step_samples": s.completions_per_step,
            "keys": collection.keys,
            STREAM_STATE: source.state_dict(),
            "metrics": metrics,
            "completions": self._completion_rows(collection, rollout),
        }

    # ------------------------------------------------------------------------------ reporting
    def _step_metrics(
        self,
        collection: Collection,
        rollout: RolloutBatch,
        sums: dict[str, float],
        grad_norms: list[float],
        timings: tuple[float, float, float, float],
    ) -> dict[str, float]:
        """Scalars of one step on this rank. Reward statistics are over every completion generated in
        the step (fresh prompts, before any selection); loss-side statistics over the trained ones."""
        drawn = collection.drawn
        rewards = torch.cat([g.rewards for g in drawn])  # [M]
        scores = torch.cat([g.scores for g in drawn])  # [M, K]
        lengths = torch.tensor([len(seq) for g in drawn for seq in g.sequences], dtype=torch.float32)  # [M]
        truncated = torch.tensor([not f for g in drawn for f in g.finished], dtype=torch.float32)  # [M]
        tokens = max(sums["tokens"], 1.0)
        started, generated, referenced, finished = timings
        out: dict[str, float] = {
            "reward_mean": float(rewards.mean()),
            "reward_std": float(rewards.std(correction=0)),
            "trained_reward_mean": float(rollout.rewards.mean()),
            "advantage_abs_mean": float(rollout.advantages.abs().mean()),
        }
        for k, name in enumerate(self.rewards.names):
            out[f"reward/{name}_mean"] = float(scores[:, k].mean())
            out[f"reward/{name}_std"] = float(scores[:, k].std(correction=0))
        diag = {name: torch.cat([g.diagnostics[name] for g in drawn]) for name in DIAGNOSTICS}
        out["accuracy"] = float(diag["accuracy"].mean())
        out["format_rate"] = float(diag["format"].mean())
        grounded = torch.tensor([bool(g.item.record.segments) for g in drawn for _ in range(g.size)])
        if bool(grounded.any()):  # only where the sample has ground-truth segments
            out["grounding_iou"] = float(diag["temporal_iou"][grounded].mean())
        out.update(
            {
                "completion_length_mean": float(lengths.mean()),
                "completion_length_max": float(lengths.max()),
                "truncated_share": float(truncated.mean()),
                "kl": sums["kl"] / tokens,
                "clip_fraction": sums["clip_fraction"] / tokens,
                "clip_fraction_low": sums["clip_fraction_low"] / tokens,
                "clip_fraction_high": sums["clip_fraction_high"] / tokens,
                "ratio_mean": sums["ratio_mean"] / tokens,
                "entropy": sums["entropy"] / tokens,
                "loss": sums["loss"] / self.settings.updates_per_batch,
                "grad_norm": grad_norms[0] if grad_norms else float("nan"),
                "groups_drawn": float(len(drawn)),
                "groups_zero_variance": float(collection.zero_variance),
                "zero_variance_share": collection.zero_variance / max(len(drawn), 1),
                "groups_skipped": float(collection.skipped),
                "groups_filled": float(collection.filled),
                "groups_discarded": float(collection.discarded),
                "rollout_rounds": float(collection.rounds),
                "time_generation_s": generated - started,
                "time_reference_s": referenced - generated,
                "time_update_s": finished - referenced,
                "lr": float(self.trainer.optimizers[0].param_groups[0]["lr"]),
            }
        )
        if rollout.rollout_logprobs is not None and self.settings.temperature == 1.0:
            out["rollout_logp_gap_max"] = sums["logp_gap"]
        return out

    def _completion_rows(self, collection: Collection, rollout: RolloutBatch) -> list[dict[str, Any]]:
        """A few complete completions of the trained groups with their rewards (for a person to read)."""
        rows: list[dict[str, Any]] = []
        G = self.settings.generations_per_prompt
        for index, group in enumerate(collection.groups):
            for g in range(group.size):
                if len(rows) >= self.completions_to_show:
                    return rows
                rows.append(
                    {
                        "key": group.item.key,
                        "gold": group.item.record.answer or group.item.record.solution,
                        "reward": float(group.rewards[g]),
                        "scores": {n: float(group.scores[g, k]) for k, n in enumerate(self.rewards.names)},
                        "advantage": float(rollout.advantages[index * G + g]),
                        "truncated": not group.finished[g],
                        "text": group.texts[g],
                    }
                )
        return rows
