"""SFTModule: supervised fine-tuning of a video LM as a LightningModule that only orchestrates.

It receives its model (or a zero-argument factory, called in `setup` so composing a config never
loads weights), an optimizer factory `f(params) -> Optimizer` and an optional scheduler factory
`f(optimizer, total_steps) -> LRScheduler`, never the config (style.md H4). Strategy, precision and
accumulation belong to the Trainer. The loss math lives in `vt_sft.loss`; batches come from
`vt_sft.datamodule` (collated by `vt_model.collate`, windowed by `vt_model.training.streaming`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch

from vt_model.collate import model_inputs
from vt_model.training.batching import reduction_scale
from vt_model.training.streaming import WINDOW_COUNT, WINDOW_POS
from vt_sft.loss import predicted_positions, shifted_targets, step_normalised, token_loss_sum

OptimizerFactory = Callable[[Any], torch.optim.Optimizer]
SchedulerFactory = Callable[..., Any]


class SFTModule(pl.LightningModule):
    """model: an nn.Module or a factory returning one (a Qwen2.5-VL, possibly LoRA-wrapped).
    optimizer: factory over the trainable parameters. scheduler: factory (optimizer, total_steps=...),
    stepped every optimizer step, or None for a constant lr.
    """

    def __init__(self, model: torch.nn.Module | Callable[[], torch.nn.Module], optimizer: OptimizerFactory,
                 scheduler: SchedulerFactory | None = None):
        super().__init__()
        self._model_factory = None if isinstance(model, torch.nn.Module) else model
        self.model = model if isinstance(model, torch.nn.Module) else None
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self._window = torch.zeros(3, dtype=torch.float64)  # loss share, tokens, samples of this step

    def setup(self, stage: str) -> None:
        # The factory runs here, not in `configure_model`: Lightning calls that inside DeepSpeed's
        # zero.Init under ZeRO-3, where transformers' from_pretrained fails (parameters are already
        # partitioned when it initialises them). Every rank loads the full model on CPU; the strategy
        # then shards or wraps it.
        if self.model is None:
            self.model = self._model_factory()

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        total_steps = int(self.trainer.estimated_stepping_batches)
        scheduler = self.scheduler_factory(optimizer, total_steps=total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _sum_over_ranks(self, values: torch.Tensor) -> torch.Tensor:
        if self.trainer.world_size == 1:
            return values
        return self.trainer.strategy.reduce(values, reduce_op="sum")

    def forward_loss_sum(self, batch: dict[str, Any]) -> tuple[torch.Tensor, int]:
        """Summed cross-entropy over the batch's label tokens, and their number. Logits are computed
        only at the positions that predict a label (`logits_to_keep` mask), not over the video."""
        labels = batch["labels"]  # (B, L)
        keep = predicted_positions(labels)  # (B, L) bool
        inputs = {k: v for k, v in model_inputs(batch).items() if k != "labels"}
        logits = self.model(**inputs, logits_to_keep=keep, use_cache=False).logits  # (N, V)
        return token_loss_sum(logits.reshape(-1, logits.shape[-1]), shifted_targets(labels, keep))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        accumulation = self.trainer.accumulate_grad_batches
        position = int(batch.get(WINDOW_POS, 0))
        if position != batch_idx % accumulation:
            raise RuntimeError(f"micro-batch {batch_idx} is #{position} of its data window, but Lightning "
                               f"accumulates {accumulation}: the data and trainer disagree on grad_accum")
        device = batch["input_ids"].device
        step_tokens = self._sum_over_ranks(torch.tensor(float(batch[WINDOW_COUNT]), device=device))
        loss_sum, _ = self.forward_loss_sum(batch)
        scale = reduction_scale(self.trainer.world_size, accumulation,
                                self.trainer.strategy.handles_gradient_accumulation)
        loss = step_normalised(loss_sum, step_tokens, scale)

        # Logging only: the step's loss, tokens and samples over all ranks (one all-reduce).
        samples = torch.tensor(float(batch["input_ids"].shape[0]), dtype=torch.float64, device=device)
        local = torch.stack([loss_sum.detach().double(), batch["attention_mask"].sum().double(), samples])
        totals = self._sum_over_ranks(local).cpu()
        share = totals[0] / step_tokens.double().clamp_min(1).cpu()
        self._window += torch.stack([share, totals[1], totals[2]])
        out: dict[str, Any] = {"loss": loss, "keys": list(batch.get("keys", [])),
                               "step_end": position == accumulation - 1}
        if out["step_end"]:
            step_loss, tokens, samples = self._window.tolist()
            self._window.zero_()
            out.update(step_loss=step_loss, step_tokens=int(tokens), step_samples=int(samples))
            self.log("train/loss", step_loss, on_step=True, on_epoch=False, prog_bar=True,
                     batch_size=int(samples), rank_zero_only=True)
        return out
