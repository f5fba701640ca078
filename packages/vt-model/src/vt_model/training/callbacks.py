"""Callbacks shared by the SFT and GRPO apps: a progress bar with loss, tokens/s and samples/s, and a
step log (JSON lines) of losses, throughput and the sample keys every rank consumed.

Both read the training-step output protocol of our LightningModules: `training_step` returns a dict with

    loss          the tensor to back-propagate
    step_end      True on the micro-batch that completes an optimizer step (accumulation window)
    step_loss     float, the step's loss over all ranks (on step_end only)
    step_tokens   int, tokens (attention positions) of the step over all ranks (on step_end only)
    step_samples  int, samples of the step over all ranks (on step_end only)
    keys          list[str], the sample keys of this micro-batch on this rank
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback
from lightning.pytorch.callbacks import TQDMProgressBar


def peak_memory() -> dict[str, float]:
    """This process's peak resident memory (MiB; Linux reports ru_maxrss in KiB) and, with CUDA, the
    peak memory allocated by torch on the current device (MiB)."""
    import resource

    import torch

    out = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available():
        out["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


class StepRate:
    """Tokens/s and samples/s between consecutive optimizer-step ends (wall clock)."""

    def __init__(self) -> None:
        self.last: float | None = None
        self.tokens_per_s = self.samples_per_s = float("nan")

    def update(self, tokens: int, samples: int) -> float:
        now = time.perf_counter()
        elapsed = float("nan") if self.last is None else now - self.last
        self.last = now
        if elapsed == elapsed and elapsed > 0:
            self.tokens_per_s, self.samples_per_s = tokens / elapsed, samples / elapsed
        return elapsed

    def restart(self) -> None:
        self.last = time.perf_counter()


def _step_output(outputs: Any) -> dict[str, Any] | None:
    return outputs if isinstance(outputs, dict) and outputs.get("step_end") else None


class ThroughputProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar plus `tok/s` and `samples/s` (global, over all ranks) next to the loss; the
    bar counts micro-batches up to max_steps × accumulation (the training stream itself is endless)."""

    def __init__(self, refresh_rate: int = 1, leave: bool = False) -> None:
        super().__init__(refresh_rate=refresh_rate, leave=leave)
        self.rate = StepRate()

    @property
    def total_train_batches(self) -> int | float:
        total = super().total_train_batches
        if total == float("inf") and self.trainer.max_steps > 0:
            return self.trainer.max_steps * self.trainer.accumulate_grad_batches
        return total

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        # A resumed run skips on_train_epoch_start (it restarts mid-epoch); the bar's count is absolute.
        self.train_progress_bar.total = self.total_train_batches
        self.train_progress_bar.set_description("Training")
        self.rate.restart()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self.train_progress_bar.set_description("Training")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = _step_output(outputs)
        if step is not None:
            self.rate.update(step["step_tokens"], step["step_samples"])
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def get_metrics(self, trainer, pl_module) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        if self.rate.tokens_per_s == self.rate.tokens_per_s:
            metrics["tok/s"] = f"{self.rate.tokens_per_s:.0f}"
            metrics["samples/s"] = f"{self.rate.samples_per_s:.2f}"
        return metrics


class StepLog(Callback):
    """JSON lines under `dirpath`, appended and flushed line by line (a killed run keeps what it did):

    steps.jsonl (rank 0): step, loss, tokens, samples, lr, seconds, tokens_per_s, samples_per_s, time
    samples-rank<r>.jsonl (every rank): step, window_pos, keys of each micro-batch
    summary-rank<r>.json (every rank, at the end): peak memory (process RSS; CUDA peak allocated) and
    the data stream's decode/skip counters, if the datamodule offers `stream_stats()`

    It also logs train/tokens_per_s, train/samples_per_s and train/lr to the trainer's loggers.
    """

    def __init__(self, dirpath: str | os.PathLike, log_keys: bool = True) -> None:
        self.dirpath = Path(dirpath)
        self.log_keys = log_keys
        self.rate = StepRate()
        self._files: dict[str, Any] = {}

    def _write(self, name: str, record: dict[str, Any]) -> None:
        fh = self._files.get(name)
        if fh is None:
            self.dirpath.mkdir(parents=True, exist_ok=True)
            fh = self._files[name] = open(self.dirpath / name, "a", encoding="utf-8")
        fh.write(json.dumps(record) + "\n")
        fh.flush()

    def on_train_start(self, trainer, pl_module) -> None:
        self.rate.restart()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = _step_output(outputs)
        if self.log_keys and isinstance(outputs, dict) and "keys" in outputs:
            # The optimizer step this micro-batch belongs to (global_step has advanced on step_end).
            number = trainer.global_step if step is not None else trainer.global_step + 1
            self._write(f"samples-rank{trainer.global_rank}.jsonl",
                        {"step": number, "window_pos": batch.get("window_pos", 0) if isinstance(batch, dict)
                         else 0, "keys": list(outputs["keys"])})
        if step is None:
            return
        seconds = self.rate.update(step["step_tokens"], step["step_samples"])
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
        if trainer.is_global_zero:
            self._write("steps.jsonl", {
                "step": trainer.global_step, "loss": step["step_loss"], "tokens": step["step_tokens"],
                "samples": step["step_samples"], "lr": lr, "seconds": seconds,
                "tokens_per_s": self.rate.tokens_per_s, "samples_per_s": self.rate.samples_per_s,
                "time": time.time()})
        metrics = {"train/lr": float(lr)}
        if self.rate.tokens_per_s == self.rate.tokens_per_s:
            metrics.update({"train/tokens_per_s": self.rate.tokens_per_s,
                            "train/samples_per_s": self.rate.samples_per_s})
        pl_module.log_dict(metrics, on_step=True, on_epoch=False, batch_size=1, rank_zero_only=True)

    def on_train_end(self, trainer, pl_module) -> None:
        summary: dict[str, Any] = {"rank": trainer.global_rank, "global_step": trainer.global_step,
                                   **peak_memory()}
        datamodule = trainer.datamodule
        if datamodule is not None and hasattr(datamodule, "stream_stats"):
            summary["stream"] = datamodule.stream_stats()
        self.dirpath.mkdir(parents=True, exist_ok=True)
        (self.dirpath / f"summary-rank{trainer.global_rank}.json").write_text(
            json.dumps(summary, indent=1, default=str) + "\n")
        self.close()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.close()

    def close(self) -> None:
        for fh in self._files.values():
            fh.close()
        self._files.clear()
