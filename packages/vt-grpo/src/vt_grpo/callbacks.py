"""Callbacks of the GRPO app: checkpoints that take the prompt-stream position from the step's output,
a JSON-lines log of every step's metrics, and a readable table of sample completions.

They read the GRPO training-step output (`GRPOModule.training_step`), which extends the protocol of
`vt_model.training.callbacks` (loss, step_end, step_loss, step_tokens, step_samples, keys) with

    stream_state   the prompt stream's position after the last prompt this step drew
    metrics        dict name -> float, everything logged for the step (this rank)
    completions    a few complete completions with their rewards (list of dicts)
"""

from __future__ import annotations

import html
import json
import os
import time
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback

from vt_model.training.checkpointing import AtomicCheckpoint
from vt_model.training.streaming import STREAM_STATE


class GRPOCheckpoint(AtomicCheckpoint):
    """`AtomicCheckpoint` whose stream position comes from the training-step output.

    A GRPO step draws a variable number of prompts itself (zero-variance groups are replaced), so the
    ticket Lightning fetched cannot know where the stream stands after the step; the module reports
    it. Everything else (atomic writes, RNG states, `resume=auto`) is AtomicCheckpoint's.
    """

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if isinstance(outputs, dict) and STREAM_STATE in outputs:
            self._stream_state = outputs[STREAM_STATE]
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


class GRPOMetricsLog(Callback):
    """`<dirpath>/grpo.jsonl` (rank 0): one line per step with every metric the module logged, appended
    and flushed line by line, so a killed run keeps its history (the CSV logger flushes in blocks)."""

    def __init__(self, dirpath: str | os.PathLike, filename: str = "grpo.jsonl") -> None:
        self.path = Path(dirpath) / filename
        self._fh = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not trainer.is_global_zero or not isinstance(outputs, dict) or "metrics" not in outputs:
            return
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")
        record = {"step": trainer.global_step, "time": time.time(), **outputs["metrics"]}
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()

    def on_train_end(self, trainer, pl_module) -> None:
        self.close()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.close()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def completions_markdown(step: int, rows: list[dict[str, Any]]) -> str:
    """A Markdown section: one table row per completion (key, gold answer, rewards, advantage, text)."""
    if not rows:
        return f"## step {step}\n\n(no completions)\n\n"
    reward_names = [k for k in rows[0].get("scores", {})]
    header = ["key", "gold", "reward", *reward_names, "advantage", "truncated", "completion"]
    lines = [f"## step {step}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        text = html.escape(row["text"]).replace("|", "\\|").replace("\n", "<br>")
        cells = [
            str(row["key"]),
            str(row.get("gold", "")),
            f"{row['reward']:.3f}",
            *[f"{row['scores'][n]:.3f}" for n in reward_names],
            f"{row['advantage']:+.3f}",
            "yes" if row.get("truncated") else "",
            f"<code>{text}</code>",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n"


class CompletionTable(Callback):
    """Every `every_n_steps` steps (and at step 1), a few complete completions with their rewards:
    appended to `<dirpath>/completions.md` and, when a TensorBoard logger is attached, added as text
    (`completions`, TensorBoard's text plugin renders the Markdown table). Rank 0 only."""

    def __init__(self, dirpath: str | os.PathLike, every_n_steps: int = 10, filename: str = "completions.md"):
        if every_n_steps < 1:
            raise ValueError("every_n_steps must be >= 1")
        self.path = Path(dirpath) / filename
        self.every_n_steps = every_n_steps

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not trainer.is_global_zero or not isinstance(outputs, dict) or not outputs.get("completions"):
            return
        step = trainer.global_step
        if step != 1 and step % self.every_n_steps:
            return
        text = completions_markdown(step, outputs["completions"])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(text)
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if type(logger).__name__ == "TensorBoardLogger" and hasattr(experiment, "add_text"):
                experiment.add_text("completions", text, global_step=step)
