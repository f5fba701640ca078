"""Optimizer-step batches over a resumable per-rank stream, for Lightning's training loop.

`StepBatches` wraps one rank's loader (a `vt_data.shards.ShardLoader`, or anything with `set_epoch`,
`state_dict`, `load_state_dict` and iteration over batches) and yields micro-batches endlessly, epoch
after epoch; the trainer's `max_steps` ends training (derived from the data's epochs by the app).

* Accumulation windows: micro-batches are grouped `grad_accum` at a time and each one carries
  `window_pos` (0..grad_accum-1) and `window_count`, the sum of `count_fn` over its window (for SFT:
  label tokens), so a loss can be normalised by the whole optimizer step before its first backward.
* Resume: each micro-batch carries `stream_state`, the loader's state right after it was produced. The
  state saved with a checkpoint is that of the last micro-batch *trained* (Lightning fetches one batch
  ahead, so the loader's own current state would skip it); `load_stream_state` makes the next iteration
  continue from it. Checkpoints fall on step boundaries, so windows realign on resume.
* Partial micro-batches (smaller than `micro_batch`, at the end of a finite epoch) are dropped, so every
  optimizer step has the same number of samples on every rank, and ranks stay in lockstep.
* An endless stream also keeps ranks in step when one rank's finite epoch is shortened by an
  undecodable (skipped) sample: that rank simply starts its next epoch earlier (style.md A5).
* Reading never moves torch's global RNG. A DataLoader draws its workers' base seed from that RNG when
  its iterator starts: at every epoch, and once more at the first read after a resume, a moment the
  uninterrupted run did not have. GRPO draws its prompts in the middle of a step, just before it samples
  completions from the same RNG, so that one draw made resumed rollouts differ from uninterrupted ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

WINDOW_POS = "window_pos"
WINDOW_COUNT = "window_count"
STREAM_STATE = "stream_state"


def batch_size_of(batch: dict[str, Any]) -> int:
    """Samples in a collated batch (the length of its `keys`, else the first tensor's first axis)."""
    if "keys" in batch:
        return len(batch["keys"])
    for value in batch.values():
        if hasattr(value, "shape"):
            return int(value.shape[0])
    raise ValueError("cannot tell the batch size: no `keys` and no tensor")


class StepBatches:
    """Endless iterable of one rank's micro-batches (dicts), grouped into accumulation windows."""

    def __init__(self, loader: Any, *, micro_batch: int, grad_accum: int = 1,
                 count_fn: Callable[[dict[str, Any]], int] | None = None):
        if micro_batch < 1 or grad_accum < 1:
            raise ValueError("micro_batch and grad_accum must be >= 1")
        self.loader, self.micro_batch, self.grad_accum = loader, micro_batch, grad_accum
        self.count_fn = count_fn or batch_size_of
        self._resume: dict[str, Any] | None = None
        self.dropped_partial = 0

    def load_stream_state(self, state: dict[str, Any] | None) -> None:
        """Continue the next iteration right after the micro-batch that produced `state`."""
        self._resume = state

    def _micro_batches(self) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """(batch, loader state after it), over epochs without end."""
        resume, self._resume = self._resume, None
        if resume is not None:
            self.loader.load_state_dict(resume)
        else:
            self.loader.set_epoch(0)
        empty_epochs = 0
        while True:
            produced = False
            for batch in _keeping_global_rng(iter(self.loader)):  # each pass is the loader's next epoch
                if batch_size_of(batch) < self.micro_batch:
                    self.dropped_partial += 1
                    continue
                produced = True
                yield batch, self.loader.state_dict()
            # One empty pass is normal after resuming at the very end of an epoch; two mean no data.
            empty_epochs = 0 if produced else empty_epochs + 1
            if empty_epochs >= 2:
                raise RuntimeError(f"the stream produced no micro-batch of {self.micro_batch} samples in "
                                   "an epoch")

    def __iter__(self) -> Iterator[dict[str, Any]]:
        window: list[tuple[dict[str, Any], dict[str, Any]]] = []
        for batch, state in self._micro_batches():
            window.append((batch, state))
            if len(window) < self.grad_accum:
                continue
            total = sum(int(self.count_fn(b)) for b, _ in window)
            for pos, (b, s) in enumerate(window):
                yield {**b, WINDOW_POS: pos, WINDOW_COUNT: total, STREAM_STATE: s}
            window = []


def _keeping_global_rng(iterator: Iterator[Any]) -> Iterator[Any]:
    """`iterator`'s items, each fetched with torch's CPU RNG saved before and restored after (module
    docstring: a DataLoader seeds its workers from it)."""
    while True:
        with torch.random.fork_rng(devices=[]):
            try:
                item = next(iterator)
            except StopIteration:
                return
        yield item
