"""GRPOModule: GRPO for a video LM as a LightningModule that only orchestrates the pure pieces.

One training step (manual optimisation: generation and updates alternate, and one rollout batch can
feed μ updates), one method per stage:

1. `_collect_rollouts`: draw the step's prompts from the stream, sample G completions each
   (`_generate`, the one place generation runs: `vt_grpo.rollout.sample_groups` with the video encoded
   once), score them (`score_groups`), skip zero-variance groups and draw more prompts up to the cap
   (`collect_groups`); then build the rollout batch (`build_rollout_batch`): identical video inputs and
   position ids for every later pass, group-relative advantages (`vt_grpo.advantages`);
2. `_reference_and_old_logprobs`, without gradients: the reference policy's log-probs (β > 0,
   `vt_grpo.policy.ReferencePolicy`) and, with μ > 1, the old policy's;
3. `_update`, μ times: for each micro-batch, the policy's log-probs (`sequence_logprobs`, gradients
   flow) into `vt_grpo.loss.grpo_loss`, backward; then clip, optimizer step, scheduler step;
4. `_step_metrics` and `_log_step`: the step's scalars, logged under `train/`.

The module receives objects (style.md H4): the policy model (or a factory), optimizer and scheduler
factories, the tokenizer (or a factory), the `RewardSet`, the `GRPOSettings` and the rollout engine (or
a factory; `vt_grpo.rollout_engines`: hf by default, vllm by config).

Reference policy and generation under ZeRO-3: `vt_grpo.policy`. The policy is built in `setup`, not in
`configure_model`, so that the reference copy is made before the strategy wraps the model (see `setup`).

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
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch

from vt_grpo.loss import grpo_loss
from vt_grpo.policy import ReferencePolicy, check_reference_mode, gathered_for_generation
from vt_grpo.rewards import RewardSet
from vt_grpo.rollout import (
    DIAGNOSTICS,
    Collection,
    Group,
    PromptItem,
    RolloutBatch,
    build_rollout_batch,
    collect_groups,
    policy_logprobs,
    sample_groups,
    score_groups,
)
from vt_grpo.rollout_engines import RolloutEngine, build_rollout_engine
from vt_grpo.settings import GRPOSettings
from vt_model.training.streaming import STREAM_STATE

log = logging.getLogger(__name__)

OptimizerFactory = Callable[[Any], torch.optim.Optimizer]
SchedulerFactory = Callable[..., Any]
# grpo_loss metrics averaged over the first update's tokens (the rollout policy).
TOKEN_WEIGHTED = ("kl", "clip_fraction", "clip_fraction_low", "clip_fraction_high", "ratio_mean")
# What `_update` sums over a step: every update's loss, the first update's token-weighted metrics and
# entropy, the largest rollout / loss log-prob gap and the completion tokens.
STEP_SUMS = ("loss", *TOKEN_WEIGHTED, "entropy", "logp_gap", "tokens")


def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class GRPOModule(pl.LightningModule):
    """model: an nn.Module or a zero-argument factory returning one (a Qwen2.5-VL, possibly LoRA).
    optimizer: factory over the trainable parameters. scheduler: factory (optimizer, total_steps=...)
    stepped after every optimizer step, or None. tokenizer: a tokenizer or a zero-argument factory.
    rewards: a RewardSet or its weights mapping (None: the paper's accuracy + format).
    settings: GRPOSettings or its fields. reference: "auto" (LoRA: adapter disabled; else: a frozen
    copy), "adapter_disabled" or "copy". completions_to_show: completions returned per step for the
    readable table (vt_grpo.callbacks.CompletionTable). rollout_engine: a RolloutEngine, a factory of
    one, "hf" / "vllm", or None (hf); built with the policy in `setup`.
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
        rollout_engine: RolloutEngine | Callable[[], RolloutEngine] | str | None = None,
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
        self.reference_mode = check_reference_mode(reference)
        self.completions_to_show = completions_to_show
        # Built with the policy (`_build`): a vLLM engine takes GPU memory on its own rank.
        self._rollout_engine_spec = rollout_engine
        self.rollout_engine: RolloutEngine | None = None
        # Built with the policy (`_build`); a plain object, so its frozen copy is no submodule
        # (vt_grpo.policy).
        self.reference_policy: ReferencePolicy | None = None

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
        if self.rollout_engine is None:
            self.rollout_engine = build_rollout_engine(self._rollout_engine_spec)
        if self.reference_policy is None:
            self.reference_policy = ReferencePolicy.for_policy(
                self.model, mode=self.reference_mode, needed=self.settings.uses_reference
            )

    @property
    def reference(self) -> torch.nn.Module | None:
        """The frozen reference model (full fine-tuning), None with LoRA (adapter disabled) or β = 0."""
        return self.reference_policy.model if self.reference_policy is not None else None

    def on_fit_start(self) -> None:
        if self.trainer.world_size != self.settings.world_size:
            raise RuntimeError(
                f"the trainer runs {self.trainer.world_size} processes but settings.world_size is "
                f"{self.settings.world_size}"
            )
        self.reference_policy.place(self.device, next(self.model.parameters()).dtype)
        log.info("GRPO: %s; reference: %s", self.settings.describe(), self.reference_policy.kind)

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

    # ------------------------------------------------------------------------------ the step
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        s = self.settings
        source = batch["prompts"]
        started = time.perf_counter()
        collection, rollout = self._collect_rollouts(source)
        micro_batches = rollout.split(s.micro_batch_per_device)
        generated = time.perf_counter()
        self._reference_and_old_logprobs(micro_batches)
        referenced = time.perf_counter()
        sums, grad_norms = self._update(rollout, micro_batches)
        finished = time.perf_counter()

        metrics = self._step_metrics(
            collection, rollout, sums, grad_norms, timings=(started, generated, referenced, finished)
        )
        self._log_step(metrics)
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

    # ------------------------------------------------------------------------------ 1. rollouts
    def _collect_rollouts(self, source) -> tuple[Collection, RolloutBatch]:
        """The step's scored groups drawn from `source` and the rollout batch built from them."""
        # eval mode: no dropout; HF turns the KV cache off in train mode with gradient checkpointing
        self.model.eval()
        collection = collect_groups(source.draw, self._rollout, self.settings, sync=self._sync)
        rollout = build_rollout_batch(
            collection.groups,
            self._pad_id,
            _base(self.model).config,
            advantage_scale=self.settings.advantage_scale,
            train_forced_tokens=self.settings.guided_span_in_loss,
        )
        return collection, rollout

    def _rollout(self, items: Sequence[PromptItem]) -> list[Group]:
        """One round of `collect_groups`: G completions per prompt, scored."""
        groups = self._generate(items)
        score_groups(groups, self.rewards)
        return groups

    def _generate(self, items: Sequence[PromptItem]) -> list[Group]:
        """G completions per prompt sampled from the current policy by the rollout engine: the one place
        the module generates (under ZeRO-3 on gathered parameters when the engine reads them)."""
        engine = self.rollout_engine
        gathered = (gathered_for_generation(self.model, self.trainer.model) if engine.reads_policy_weights
                    else contextlib.nullcontext())
        with gathered:
            return sample_groups(self.model, self.tokenizer, items, self.settings, engine=engine)

    @property
    def _pad_id(self) -> int:
        from vt_model.prompts import special_ids

        return special_ids(self.tokenizer).pad

    def _sync(self, tensor: torch.Tensor, op: str) -> torch.Tensor:
        if self.trainer.world_size == 1:
            return tensor
        return self.trainer.strategy.reduce(tensor.to(self.device), reduce_op=op).cpu()

    # ------------------------------------------------------------------------------ 2. log-probs
    def _reference_and_old_logprobs(self, micro_batches: Sequence[RolloutBatch]) -> None:
        """Fill each micro-batch's `ref_logprobs` (β > 0) and `old_logprobs` (μ > 1), before any update."""
        s = self.settings
        with torch.no_grad():
            for mb in micro_batches:
                if s.uses_reference:
                    mb.ref_logprobs = self.reference_policy.logprobs(
                        self.model, mb.inputs, mb.completion_mask, temperature=s.temperature
                    )
                if s.updates_per_batch > 1:
                    mb.old_logprobs = policy_logprobs(
                        self.model, mb.inputs, mb.completion_mask, temperature=s.temperature
                    )[0]

    # ------------------------------------------------------------------------------ 3. updates
    def _update(
        self, rollout: RolloutBatch, micro_batches: Sequence[RolloutBatch]
    ) -> tuple[dict[str, float], list[float]]:
        """μ optimizer steps over the micro-batches. Returns the step's `STEP_SUMS` and the gradient
        norm of every update."""
        s = self.settings
        policy = self.model
        policy.train()
        optimizer = self.optimizers()
        scheduler = self.lr_schedulers()
        normaliser = self._normaliser(rollout)
        scale = float(self.trainer.world_size)  # DDP / DeepSpeed average gradients over ranks
        sums = dict.fromkeys(STEP_SUMS, 0.0)
        grad_norms = []
        for update in range(s.updates_per_batch):
            first = update == 0
            update_loss = 0.0
            for i, mb in enumerate(micro_batches):
                self._start_micro_batch(i == len(micro_batches) - 1)
                logp, entropy = policy_logprobs(
                    policy, mb.inputs, mb.completion_mask, temperature=s.temperature, with_entropy=first
                )  # [n, L]
                mask = mb.completion_mask.to(logp.device)
                loss, metrics = self._micro_batch_loss(logp, mb, mask, normaliser)
                self.manual_backward(loss * scale)
                update_loss += float(loss.detach())
                if first:  # token-weighted metrics of the first update (the rollout policy)
                    self._add_rollout_policy_metrics(sums, metrics, logp, entropy, mask, mb)
            grad_norms.append(self._clip_and_norm(optimizer))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if scheduler is not None:
                scheduler.step()
            sums["loss"] += update_loss
        policy.eval()
        # The next rollout must sample from the updated policy: an engine holding its own copy of the
        # weights (vLLM) loads them now; the hf engine reads the live parameters and does nothing.
        self.rollout_engine.after_update(self.model, self.trainer.model)
        return sums, grad_norms

    def _micro_batch_loss(
        self, logp: torch.Tensor, mb: RolloutBatch, mask: torch.Tensor, normaliser: float
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """`grpo_loss` of one micro-batch: its share of the whole step's loss (`normaliser`)."""
        s = self.settings
        return grpo_loss(
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

    def _add_rollout_policy_metrics(
        self,
        sums: dict[str, float],
        metrics: Mapping[str, torch.Tensor],
        logp: torch.Tensor,
        entropy: torch.Tensor,
        mask: torch.Tensor,
        mb: RolloutBatch,
    ) -> None:
        """Add one micro-batch of the first update to the step's sums (token-weighted)."""
        tokens = float(mask.sum())
        sums["tokens"] += tokens
        for key in TOKEN_WEIGHTED:
            sums[key] += float(metrics[key]) * tokens
        sums["entropy"] += float(entropy.sum())
        if mb.rollout_logprobs is not None and self.settings.temperature == 1.0:
            # generate's log-probs vs the loss pass: equal up to rounding when the inputs are
            # identical (method.md §10.10); a gap means rollout and loss see different inputs.
            gap = (logp.detach() - mb.rollout_logprobs.to(logp.device)).abs()
            sums["logp_gap"] = max(sums["logp_gap"], float(gap[mask].max()) if tokens else 0.0)

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

    # ------------------------------------------------------------------------------ 4. reporting
    def _log_step(self, metrics: Mapping[str, float]) -> None:
        """The step's scalars under `train/`, and the mean reward on the progress bar."""
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
        guided = torch.tensor([n > 0 for g in drawn for n in (g.forced_lengths or [0] * g.size)])  # [M]
        if bool(guided.any()):  # guided spans: does a drawn span earn more than the policy's own?
            out["guided_share"] = float(guided.float().mean())
            out["guided_reward_mean"] = float(rewards[guided].mean())
            if bool((~guided).any()):
                out["free_reward_mean"] = float(rewards[~guided].mean())
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
        out.update(self.rollout_engine.stats())  # e.g. the vLLM engine's weight-sync seconds
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
