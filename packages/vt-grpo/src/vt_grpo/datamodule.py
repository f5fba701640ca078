"""PromptDataModule: GRPO prompts streamed from WebDataset shards to every rank, with exact resume.

GRPO needs only the question, the video and the answer: records without a trace (answer-only) are
fine, and `process` is never read. Each sample is decoded and encoded into a prompt
(`vt_model.prompts.encode_prompt`, the one prompt builder SFT, rollouts and evaluation share) inside
the loader's workers, one prompt per item.

A GRPO step draws a *variable* number of prompts (zero-variance groups are skipped and replaced,
`vt_grpo.rollout.collect_groups`), so the prompts are not Lightning's batch. Lightning iterates an
endless sequence of step tickets `{"prompts": PromptSource}`; the module draws from the source itself
and returns the source's `state_dict()` (the position right after the last prompt it drew) in its
training-step output, where `vt_grpo.callbacks.GRPOCheckpoint` saves it. On resume the position is
handed back through `load_stream_state`, so the stream neither repeats nor skips a prompt.

Splitting, shuffling and epochs are vt-data's (`vt_data.shards`): equal contiguous per-rank ranges per
epoch (style.md A5), epochs one after another without end (`vt_model.training.streaming.StepBatches`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl

from vt_grpo.rollout import PromptItem
from vt_model.processing import VideoProcessorConfig
from vt_model.training.streaming import STREAM_STATE, StepBatches

PROMPTS = "prompts"


class PromptTooLongError(ValueError):
    """A prompt (text + video tokens) longer than the configured maximum."""


@dataclass
class PromptCollator:
    """One decoded stream sample ({"key", "record", "clip"}) -> {"keys": [key], "item": PromptItem}.
    Runs in the loader's workers (it pickles: a tokenizer and plain settings)."""

    tokenizer: Any
    processor: VideoProcessorConfig
    template: str = "video_thinker"
    include_timestamps: bool = False
    max_prompt_length: int | None = None

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        from vt_model.families import get_family
        from vt_model.prompts import encode_prompt, record_label

        if len(samples) != 1:
            raise ValueError(f"the prompt loader yields one prompt per item, got {len(samples)}")
        sample = samples[0]
        record, clip = sample["record"], sample["clip"]
        # the model family the processor settings belong to (`model.family` in the config)
        family = get_family(self.processor.family)
        video = family.preprocess_video(clip.frames, clip.timestamps, self.processor)
        prompt = encode_prompt(
            self.tokenizer,
            record,
            video,
            self.template,
            timestamps=clip.timestamps,
            include_timestamps=self.include_timestamps,
        )
        length = int(prompt["input_ids"].numel())
        if self.max_prompt_length is not None and length > self.max_prompt_length:
            # Vision tokens are never truncated; a prompt that does not fit fails loudly.
            raise PromptTooLongError(
                f"record {record_label(record)}: prompt of {length} tokens "
                f"({prompt['num_video_tokens']} video) > max_prompt_length="
                f"{self.max_prompt_length}"
            )
        prompt.pop("prompt_text", None)
        return {"keys": [sample["key"]], "item": PromptItem(prompt=prompt, record=record, key=sample["key"])}


class PromptSource:
    """One rank's endless prompt stream: `draw(n)` the next n prompts; `state_dict()` the position
    after the last one drawn; `load_state_dict(state)` continue right after it.

    Deliberately a plain class (not a dataclass, mapping or sequence): Lightning and DDP rebuild those
    when they move a batch to a device, and the ticket must carry this very object.
    """

    def __init__(self, loader: Any):
        self.batches = StepBatches(loader, micro_batch=1, grad_accum=1)
        self._iterator: Iterator[dict[str, Any]] | None = None
        self._state: dict[str, Any] | None = None
        self.drawn = 0

    def draw(self, n: int) -> list[PromptItem]:
        if self._iterator is None:
            self._iterator = iter(self.batches)
        items = []
        for _ in range(n):
            batch = next(self._iterator)
            items.append(batch["item"])
            self._state = batch[STREAM_STATE]
        self.drawn += len(items)
        return items

    def state_dict(self) -> dict[str, Any] | None:
        return self._state

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        self.batches.load_stream_state(state)
        self._iterator = None
        self._state = state

    @property
    def dropped(self) -> int:
        return self.batches.dropped_partial


class StepTickets:
    """What Lightning iterates: `{"prompts": source}` forever (max_steps ends training)."""

    def __init__(self, source: PromptSource):
        self.source = source

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            yield {PROMPTS: self.source}


class PromptDataModule(pl.LightningDataModule):
    """train_shards: a shard directory (anything `vt_data.shards.list_shards` accepts).
    tokenizer: a tokenizer or a zero-argument factory. world_size: data-parallel processes (checked
    against the trainer). stream: `vt_data.shards.StreamConfig` fields other than urls/rank/world_size.
    processor / template / include_timestamps: the prompt encoding (as in SFT, so the policy sees the
    prompts it was fine-tuned on). max_prompt_length: longer prompts fail loudly.
    """

    def __init__(
        self,
        train_shards: str | os.PathLike | Sequence[str],
        tokenizer: Any,
        world_size: int = 1,
        stream: dict[str, Any] | None = None,
        processor: VideoProcessorConfig | None = None,
        template: str = "video_thinker",
        include_timestamps: bool = False,
        max_prompt_length: int | None = None,
        num_workers: int = 0,
    ):
        super().__init__()
        self.train_shards = train_shards
        self._tokenizer = tokenizer
        self.world_size = int(world_size)
        self.stream = dict(stream or {})
        self.processor = processor or VideoProcessorConfig()
        self.template = template
        self.include_timestamps = include_timestamps
        self.max_prompt_length = max_prompt_length
        self.num_workers = num_workers
        self.tokenizer = None
        self.loader = None
        self.source: PromptSource | None = None
        self._pending_state: dict[str, Any] | None = None

    def stream_config(self, rank: int, world_size: int):
        from vt_data.shards.stream import StreamConfig

        return StreamConfig(urls=self.train_shards, rank=rank, world_size=world_size, **self.stream)

    def setup(self, stage: str | None = None) -> None:
        from vt_data.shards.stream import make_loader

        if self.source is not None:
            return
        trainer = self.trainer
        rank, world = (
            (trainer.global_rank, trainer.world_size) if trainer is not None else (0, self.world_size)
        )
        if world != self.world_size:
            # Lightning can silently run fewer ranks than configured (Lightning#20391).
            raise RuntimeError(f"the trainer runs {world} processes but world_size is {self.world_size}")
        self.tokenizer = (
            self._tokenizer()
            if callable(self._tokenizer) and not hasattr(self._tokenizer, "pad_token_id")
            else self._tokenizer
        )
        collator = PromptCollator(
            self.tokenizer, self.processor, self.template, self.include_timestamps, self.max_prompt_length
        )
        self.loader = make_loader(
            self.stream_config(rank, world), batch_size=1, num_workers=self.num_workers, collate_fn=collator
        )
        self.source = PromptSource(self.loader)
        if self._pending_state is not None:
            self.source.load_state_dict(self._pending_state)
            self._pending_state = None

    def train_dataloader(self) -> StepTickets:
        if self.source is None:
            self.setup("fit")
        return StepTickets(self.source)

    def load_stream_state(self, state: dict[str, Any] | None) -> None:
        """Resume: the next draw continues right after the prompt whose stream state this is."""
        if self.source is None:
            self._pending_state = state
        else:
            self.source.load_state_dict(state)

    def stream_stats(self) -> dict[str, Any]:
        """Decoded / skipped counts of this rank's stream, and prompts drawn."""
        if self.loader is None:
            return {}
        stats = self.loader.stats.as_dict()
        stats["prompts_drawn"] = self.source.drawn if self.source else 0
        return stats
