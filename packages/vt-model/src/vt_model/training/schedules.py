"""Learning-rate schedules as picklable multipliers (their state saves with `weights_only` loading).

The paper does not give a schedule for SFT (method.md §6); our default is linear warm-up over a ratio
of the steps, then cosine decay to `min_lr_ratio` × lr. A resumed run restores the schedule it was
saved with (its total steps included), so changing max_steps on resume does not stretch the schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class WarmupCosine:
    """lr multiplier at `step` (0-based count of finished optimizer steps): linear from 1/(warmup+1) to 1
    over `warmup_steps`, then cosine from 1 to `min_ratio` at `total_steps`; flat after that.

    A callable object rather than a closure: LambdaLR saves an object's `__dict__` (plain numbers) and
    restores it, whereas a lambda's state is silently dropped.
    """

    total_steps: int
    warmup_steps: int = 0
    min_ratio: float = 0.0

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_steps_for(total_steps: int, warmup_ratio: float) -> int:
    if not 0.0 <= warmup_ratio < 1.0:
        raise ValueError(f"warmup_ratio must be in [0, 1), got {warmup_ratio}")
    return math.ceil(total_steps * warmup_ratio)


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, *, warmup_ratio: float = 0.03,
                  min_lr_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step LambdaLR: warm-up over ceil(total_steps × warmup_ratio) steps, then cosine decay."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    multiplier = WarmupCosine(total_steps, warmup_steps_for(total_steps, warmup_ratio), min_lr_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)


def constant(optimizer: torch.optim.Optimizer, total_steps: int, *, warmup_ratio: float = 0.0
             ) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then constant (min_ratio = 1)."""
    multiplier = WarmupCosine(total_steps, warmup_steps_for(total_steps, warmup_ratio), 1.0)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
