"""Fault injection for resilience tests and drills: real signals sent by a training process to itself at
chosen points of chosen steps, each once per run directory.

    vt-sft experiment=tiny_cpu '+callbacks.faults={_target_: vt_model.training.faults.FaultInjection,
        dirpath: ${paths.run_dir}/faults, faults: [{step: 3, at: backward, signal: SIGUSR1}]}'

A fault is a mapping: `step` (the optimizer step it happens in, counted from 1), `at` (where in that step),
`signal` (a name such as SIGUSR1, SIGTERM, SIGKILL), `rank` (the global rank that sends it; null: every
rank) and `delay_s` (0: at once; else from a timer thread, landing wherever the step is by then).

Points (`at`):
- `forward`: the first forward call of any module of the model in that step: for SFT the step's forward
  pass, for GRPO the first forward of the rollout's generation (mid-rollout);
- `backward`: just before the step's first backward pass (mid-step, after the forward);
- `save`: inside the checkpoint of that step, after its temporary directory exists and before the
  model state is written (Lightning's `on_save_checkpoint`: mid-checkpoint-write);
- `step_start`: at the first micro-batch of that step, before anything else of the step.

Each fault leaves a marker `<dirpath>/fault-<index>-rank<r>.fired` (what fired where) before it fires, so a
resumed run that passes the same step again does not fire it again (the marker outlives a SIGKILL). Not
for production runs: it kills its own process on purpose.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback

from vt_model.training.resilience import signal_number

POINTS = ("forward", "backward", "save", "step_start")


class FaultInjection(Callback):
    """Send the configured signals to this process at the configured points (module docstring)."""

    def __init__(self, faults: Iterable[Mapping[str, Any]], dirpath: str | os.PathLike):
        self.faults = []
        for index, fault in enumerate(faults):
            fault = dict(fault)
            unknown = set(fault) - {"step", "at", "signal", "rank", "delay_s"}
            if unknown or fault.get("at") not in POINTS or int(fault.get("step", 0)) < 1:
                raise ValueError(f"fault {index}: {fault} (keys step >= 1, at in {POINTS}, signal, rank, "
                                 f"delay_s)")
            self.faults.append({"index": index, "step": int(fault["step"]), "at": fault["at"],
                                "signal": signal_number(fault.get("signal", "SIGUSR1")),
                                "rank": fault.get("rank"), "delay_s": float(fault.get("delay_s", 0.0))})
        self.dirpath = Path(dirpath)
        self._hooks: list[Any] = []
        self._trainer = None
        self._fired: set[int] = set()

    # -- firing ------------------------------------------------------------------------------------
    def _marker(self, fault: dict[str, Any], rank: int) -> Path:
        return self.dirpath / f"fault-{fault['index']}-rank{rank}.fired"

    def _due(self, trainer, at: str, step: int) -> list[dict[str, Any]]:
        rank = trainer.global_rank
        return [f for f in self.faults
                if f["at"] == at and f["step"] == step and f["index"] not in self._fired
                and f["rank"] in (None, rank) and not self._marker(f, rank).exists()]

    def _fire(self, trainer, at: str, step: int, note: str = "") -> None:
        for fault in self._due(trainer, at, step):
            self._fired.add(fault["index"])
            marker = self._marker(fault, trainer.global_rank)
            marker.parent.mkdir(parents=True, exist_ok=True)
            with open(marker, "w") as fh:  # on disk before the signal: a SIGKILL must not fire it twice
                fh.write(f"{fault['signal'].name} at {at} of step {step}{note}\n")
                fh.flush()
                os.fsync(fh.fileno())
            if fault["delay_s"] > 0:
                timer = threading.Timer(fault["delay_s"], os.kill, (os.getpid(), fault["signal"]))
                timer.daemon = True
                timer.start()
            else:
                os.kill(os.getpid(), fault["signal"])

    # -- the points --------------------------------------------------------------------------------
    def on_train_start(self, trainer, pl_module) -> None:
        self._trainer = trainer
        if any(f["at"] == "forward" for f in self.faults):
            model = getattr(pl_module, "model", None) or pl_module
            self._hooks = [m.register_forward_pre_hook(self._on_forward) for m in model.modules()]

    def _on_forward(self, module, args) -> None:
        trainer = self._trainer
        if trainer is not None:
            # The mode tells a rollout (GRPO generates in eval mode) from an update.
            self._fire(trainer, "forward", trainer.global_step + 1,
                       f" ({type(module).__name__} in {'train' if module.training else 'eval'} mode)")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._fire(trainer, "step_start", trainer.global_step + 1)

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self._fire(trainer, "backward", trainer.global_step + 1)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self._fire(trainer, "save", trainer.global_step)

    def on_train_end(self, trainer, pl_module) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
