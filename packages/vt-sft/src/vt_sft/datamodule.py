"""SFTDataModule: WebDataset shards streamed to every rank (vt_data.shards), encoded and collated into
SFT batches of the processor settings' model family (vt_model.collate, vt_model.families) inside the
loader's workers, and grouped into accumulation windows with resume positions
(vt_model.training.streaming).

Splitting is vt-data's: each epoch's sample sequence is shuffled per (seed, epoch) and cut into equal
contiguous per-rank ranges (or resampled per rank), so ranks always have equal lengths (style.md A5);
Lightning's distributed sampler is not used (`use_distributed_sampler: false`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl

from vt_model.collate import TokenBudget, collate_sft, encode_sft_example
from vt_model.processing import VideoProcessorConfig
from vt_model.training.batching import BatchSizes
from vt_model.training.streaming import StepBatches
from vt_sft.loss import label_token_count


@dataclass
class SFTCollator:
    """Decoded stream samples ({"key", "record", "clip"}) -> one collated SFT batch. Runs in the
    loader's worker processes (it pickles: a tokenizer and plain settings)."""

    tokenizer: Any
    processor: VideoProcessorConfig
    budget: TokenBudget | None
    template: str = "video_thinker"
    include_timestamps: bool = False

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        examples = [encode_sft_example(self.tokenizer, s["record"], s["clip"], self.processor, self.template,
                                       self.budget, include_timestamps=self.include_timestamps)
                    for s in samples]
        batch = collate_sft(examples, pad_token_id=self.tokenizer.pad_token_id)
        batch["keys"] = [s["key"] for s in samples]  # shard keys: unique, what the resume test compares
        return batch


def count_label_tokens(batch: dict[str, Any]) -> int:
    return label_token_count(batch["labels"])


class SFTDataModule(pl.LightningDataModule):
    """train_shards: a shard directory (or anything `vt_data.shards.list_shards` accepts).
    tokenizer: a tokenizer or a zero-argument factory (the model's). batch: the BatchSizes.
    stream: `vt_data.shards.StreamConfig` fields other than urls/rank/world_size (frames, shuffle,
    seed, resampled, samples_per_rank...). processor / budget / template: the encoding settings (processor:
    the model family's video settings, `vt_model.families.video_config`; its family encodes the batches).
    """

    def __init__(self, train_shards: str | os.PathLike | Sequence[str], tokenizer: Any, batch: BatchSizes,
                 stream: dict[str, Any] | None = None, processor: VideoProcessorConfig | None = None,
                 budget: TokenBudget | None = None, template: str = "video_thinker",
                 include_timestamps: bool = False, num_workers: int = 0):
        super().__init__()
        self.train_shards = train_shards
        self._tokenizer = tokenizer
        self.batch = batch
        self.stream = dict(stream or {})
        self.processor = processor or VideoProcessorConfig()
        self.budget = budget
        self.template = template
        self.include_timestamps = include_timestamps
        self.num_workers = num_workers
        self.tokenizer = None
        self.loader = None
        self.batches: StepBatches | None = None
        self._pending_state: dict[str, Any] | None = None
        frames = self.stream.get("num_frames")
        if frames is not None and frames > self.processor.max_frames:
            raise ValueError(f"the stream samples {frames} frames but the processor allows "
                             f"{self.processor.max_frames}")

    def stream_config(self, rank: int, world_size: int):
        from vt_data.shards.stream import StreamConfig

        return StreamConfig(urls=self.train_shards, rank=rank, world_size=world_size, **self.stream)

    def samples_per_rank(self) -> int:
        """The epoch length of one rank (from the shard index; no video is read)."""
        from vt_data.shards.stream import make_stream

        return make_stream(self.stream_config(0, self.batch.world_size)).samples_per_rank()

    def max_steps(self, epochs: float) -> int:
        """Optimizer steps in `epochs` passes over the data at these batch sizes."""
        return self.batch.steps_for_epochs(self.samples_per_rank(), epochs)

    def setup(self, stage: str | None = None) -> None:
        from vt_data.shards.stream import make_loader

        if self.loader is not None:
            return
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        if world != self.batch.world_size:
            # Lightning can silently run fewer ranks than configured (Lightning#20391).
            raise RuntimeError(f"the trainer runs {world} processes but batch.world_size is "
                               f"{self.batch.world_size}")
        # A factory (the config's `_partial_` load_tokenizer) or a tokenizer (which is callable too).
        factory = not hasattr(self._tokenizer, "pad_token_id")
        self.tokenizer = self._tokenizer() if factory else self._tokenizer
        collator = SFTCollator(self.tokenizer, self.processor, self.budget, self.template,
                               self.include_timestamps)
        self.loader = make_loader(self.stream_config(rank, world),
                                  batch_size=self.batch.micro_batch_per_device,
                                  num_workers=self.num_workers, collate_fn=collator)
        self.batches = StepBatches(self.loader, micro_batch=self.batch.micro_batch_per_device,
                                   grad_accum=self.batch.grad_accum, count_fn=count_label_tokens)
        if self._pending_state is not None:
            self.batches.load_stream_state(self._pending_state)
            self._pending_state = None

    def train_dataloader(self) -> StepBatches:
        if self.batches is None:
            self.setup("fit")
        return self.batches

    def load_stream_state(self, state: dict[str, Any] | None) -> None:
        """Resume: the next iteration continues after the micro-batch whose `stream_state` this is."""
        if self.batches is None:
            self._pending_state = state
        else:
            self.batches.load_stream_state(state)

    def stream_stats(self) -> dict[str, Any]:
        """Decoded / skipped counts of this rank's stream (undecodable samples are skipped, not replaced)."""
        if self.loader is None:
            return {}
        stats = self.loader.stats.as_dict()
        stats["dropped_partial_batches"] = self.batches.dropped_partial if self.batches else 0
        return stats

