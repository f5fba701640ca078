"""Batch sizes named without ambiguity (style.md A2): a per-device micro-batch, gradient accumulation and
the world size are the knobs; the global batch is derived, and a declared global batch is checked.

Also the loss scale that makes a per-token mean over the whole optimizer step independent of the
layout (see `reduction_scale`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BatchSizes:
    """micro_batch_per_device: samples in one forward/backward on one device.
    grad_accum: micro-batches accumulated per optimizer step.
    world_size: data-parallel processes (devices per node × nodes).
    global_batch: optional declared value; it must equal the product of the three above, so a config
    that says "16" cannot silently mean something else.
    """

    micro_batch_per_device: int
    grad_accum: int = 1
    world_size: int = 1
    global_batch: int | None = None

    def __post_init__(self) -> None:
        for name in ("micro_batch_per_device", "grad_accum", "world_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        derived = self.micro_batch_per_device * self.grad_accum * self.world_size
        if self.global_batch is not None and self.global_batch != derived:
            raise ValueError(
                f"global_batch={self.global_batch} but micro_batch_per_device × grad_accum × world_size = "
                f"{self.micro_batch_per_device} × {self.grad_accum} × {self.world_size} = {derived}")

    @property
    def samples_per_step(self) -> int:
        """The global batch: samples in one optimizer step over all ranks."""
        return self.micro_batch_per_device * self.grad_accum * self.world_size

    @property
    def samples_per_rank_step(self) -> int:
        return self.micro_batch_per_device * self.grad_accum

    @classmethod
    def from_global(cls, global_batch: int, micro_batch_per_device: int, world_size: int) -> BatchSizes:
        """Derive grad_accum from a global batch; refuses sizes that do not divide."""
        per_step = micro_batch_per_device * world_size
        if global_batch < 1 or global_batch % per_step:
            raise ValueError(f"global_batch={global_batch} is not a multiple of micro_batch_per_device × "
                             f"world_size = {micro_batch_per_device} × {world_size} = {per_step}")
        return cls(micro_batch_per_device, global_batch // per_step, world_size, global_batch)

    def steps_for_epochs(self, samples_per_rank: int, epochs: float) -> int:
        """Optimizer steps in `epochs` passes over `samples_per_rank` samples per rank.

        Partial micro-batches are dropped (every step has the same size); an accumulation window may
        span an epoch boundary, so only the total over all epochs is rounded down.
        """
        micro_batches = samples_per_rank // self.micro_batch_per_device
        if micro_batches < self.grad_accum:
            raise ValueError(f"{samples_per_rank} samples per rank give {micro_batches} micro-batches of "
                             f"{self.micro_batch_per_device}: fewer than one step of "
                             f"grad_accum={self.grad_accum}")
        return int(epochs * micro_batches) // self.grad_accum


def reduction_scale(world_size: int, grad_accum: int, strategy_divides_by_accum: bool = False) -> float:
    """The factor that undoes the frameworks' averaging, so that a loss computed as
    `sum of this micro-batch's token losses / tokens of the whole optimizer step (all ranks)` yields the
    gradient of the global per-token mean.

    DDP and ZeRO average gradients over ranks (÷ world_size), Lightning divides a training-step loss by
    `accumulate_grad_batches`, and DeepSpeed's engine divides it by its gradient-accumulation steps
    once more (Lightning's DeepSpeed precision plugin calls `engine.backward`, which scales by 1/gas).
    """
    return float(world_size * grad_accum * (grad_accum if strategy_divides_by_accum else 1))


def product(*values: int) -> int:
    """`${vt.mul:a,b}` in the configs (world size = devices × nodes)."""
    out = 1
    for v in values:
        out *= int(v)
    return out
