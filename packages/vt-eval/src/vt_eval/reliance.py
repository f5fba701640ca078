"""Reliance on the model's own evidence (a counterfactual): re-ask each question with the frames inside
the model's own `<time>` span(s) replaced by black frames and, as the control, as many frames elsewhere
masked; how often does the answer change in each case? A model that uses its evidence changes its
answer far more often when its own span is masked than when the control is.

Same path as the evaluation: the video is decoded with the protocol's sampling (vt_eval.decoding), the
decoded frames inside the span(s), found by their timestamps, are set to 0 (black uint8 RGB), and the
masked clip goes through the engine's own `prepare` (vt_model preprocessing: resize, normalise, patchify)
and `generate`, with the run's prompt and sampling, each batch seeded from its first sample as the runner
does.

Masks, per sample (`frames_in_spans`, `control_frames`):
- own: every decoded frame whose timestamp t lies in one of the model's spans, start <= t < end (the
  output's parsable `<time>` spans clipped to the video, degenerate ones too: a whole-clip span masks
  every frame);
- control: as many frames (k), contiguous, where they overlap the own mask least, ties broken by a digest
  of the sample key (the same in every run). When k > T/2 they must overlap; `overlap` records the share
  of the control frames inside the own mask (1.0 for a whole-clip span: both conditions then mask the
  same frames, and the difference between them is 0 by construction).
Not re-asked, and counted: outputs without a parsable span (`no_span`) and spans that hold no decoded
frame (`no_frames`, e.g. a 0.5-s span between two sampled frames). Grounding questions (the answer is a
span) are left out.

Changed: the answer extracted (strict, the primary extraction) from the masked re-ask differs from the
original prediction. The masked answer's score is kept too.

Subset (`RelianceOptions`): the plan indices i with i % every == 0, the first `limit` of them: fixed, the
same whatever the number of ranks or reruns.

File: `reliance.jsonl` (`reliance.rank{r}-of-{w}.jsonl` for rank r of w), one line per sample: {index,
key, prompt_hash, output_sha, category, status ("ok" | "no_span" | "no_frames" | "decode_failed"),
spans, frame_timestamps, original_prediction, original_score, own: {frames, output, prediction, changed,
score}, control: {frames, overlap, output, prediction, changed, score}}. Resume: a sample is done when a
line with its key, prompt hash and output digest exists with a status other than decode_failed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vt_data.records import VideoQA
from vt_data.timespan import Span
from vt_eval.decoding import Failed, prefetch
from vt_eval.faithfulness import output_sha, pass_lines, summarise_pass
from vt_eval.metrics import predicted_spans
from vt_eval.plan import Sample
from vt_eval.predictions import PredictionWriter, read_predictions, shard_name
from vt_eval.protocol import Protocol

log = logging.getLogger("vt_eval")

RELIANCE = "reliance"
CONDITIONS = ("own", "control")


@dataclass(frozen=True)
class RelianceOptions:
    """Which samples the reliance pass re-asks (module doc) and how many per generate call (each sample
    is asked twice: own span masked, control masked)."""

    every: int = 1
    limit: int | None = None
    batch_size: int = 4

    def __post_init__(self) -> None:
        if self.every < 1 or self.batch_size < 1 or (self.limit is not None and self.limit < 0):
            raise ValueError(f"need every >= 1, batch_size >= 1 and limit >= 0 or None; got {self}")

    def selects(self, index: int) -> bool:
        """Whether plan index `index` is in the fixed subset."""
        return index % self.every == 0 and (self.limit is None or index // self.every < self.limit)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- masks -------------------------------------------------------------------------------------------
def frames_in_spans(timestamps: Sequence[float] | np.ndarray, spans: Iterable[Span]) -> np.ndarray:
    """bool (T,): frame t is inside some span, start <= t < end."""
    ts = np.asarray(timestamps, dtype=np.float64)
    mask = np.zeros(ts.shape, dtype=bool)
    for start, end in spans:
        mask |= (ts >= start) & (ts < end)
    return mask


def control_frames(own: np.ndarray, key: str) -> tuple[np.ndarray, float]:
    """(bool (T,) mask of k = own.sum() contiguous frames overlapping `own` least, share of them inside
    `own`); among equally good windows the one a digest of `key` picks."""
    total, k = len(own), int(own.sum())
    if k == 0:
        return np.zeros_like(own), 0.0
    overlaps = [int(own[j:j + k].sum()) for j in range(total - k + 1)]
    best = [j for j, o in enumerate(overlaps) if o == min(overlaps)]
    j = best[int(hashlib.sha256(key.encode()).hexdigest(), 16) % len(best)]
    mask = np.zeros_like(own)
    mask[j:j + k] = True
    return mask, overlaps[j] / k


def black_out(clip: Any, mask: np.ndarray) -> Any:
    """A copy of the clip (vt_data.video.VideoClip) with the masked frames set to 0 (black)."""
    frames = clip.frames.copy()
    frames[np.asarray(mask, dtype=bool)] = 0
    return dataclasses.replace(clip, frames=frames)


# --- the pass ----------------------------------------------------------------------------------------
@dataclass
class _Masked:
    spans: list[Span]
    timestamps: list[float]
    status: str  # ok | no_span | no_frames
    masks: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    overlap: float = 0.0
    prepared: dict[str, Any] = dataclasses.field(default_factory=dict)


def _finished(line: Mapping[str, Any]) -> bool:
    return line.get("status") != "decode_failed"  # a failed decode is tried again by the next run


def run_reliance(
    out_dir: str | Path,
    items: Sequence[tuple[Sample, Mapping[str, Any]]],
    engine: Callable[[], Any],
    protocol: Protocol,
    options: RelianceOptions,
    read: Callable[[VideoQA], Any],
    *,
    category: Callable[[VideoQA], str | None] = lambda record: None,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
) -> dict[str, Any]:
    """Re-ask the selected (plan sample, ok prediction line) pairs not done yet with their own span and a
    control span masked (module doc); lines appended to this rank's reliance file per batch.

    engine(): the run's generation engine (prepare / generate, vt_model.engines), called only when
    something is left to re-ask (a resumed pass loads no model). read(record): the decoded clip or
    `decoding.Failed`. Returns counts and seconds."""
    import torch

    from vt_data.scoring import extract_prediction, score_answer

    out_dir = Path(out_dir)
    started = time.time()
    done = set(pass_lines(out_dir, RELIANCE, _finished))
    own_file = out_dir / shard_name(RELIANCE, rank, world_size)
    read_predictions(own_file, repair=True)
    pending = [(s, line) for s, line in items
               if options.selects(s.index) and s.record.problem_type != "grounding"
               and (s.key, s.prompt_hash, output_sha(line["output"])) not in done]
    stats: dict[str, Any] = {"pending": len(pending), "asked": 0, "no_span": 0, "no_frames": 0,
                             "decode_failed": 0}
    if not pending:
        return stats
    engine = engine()

    def mask(item: tuple[Sample, Mapping[str, Any]]) -> Any:
        sample, line = item
        clip = read(sample.record)
        if isinstance(clip, Failed):
            return clip
        spans = predicted_spans(line["output"], sample.record.duration or clip.duration)
        masked = _Masked(spans, [float(t) for t in clip.timestamps], "no_span")
        if not spans:
            return masked
        own = frames_in_spans(clip.timestamps, spans)
        if not own.any():
            masked.status = "no_frames"
            return masked
        control, masked.overlap = control_frames(own, sample.key)
        masked.status, masked.masks = "ok", {"own": own, "control": control}
        for condition, frames in masked.masks.items():
            masked.prepared[condition] = engine.prepare(
                sample.record, sample.template, black_out(clip, frames), prompt_text=sample.prompt_text)
        return masked

    writer = PredictionWriter(own_file)
    try:
        stream = prefetch(mask, pending, num_workers)
        for first in range(0, len(pending), options.batch_size):
            chunk = [next(stream) for _ in pending[first:first + options.batch_size]]
            ready = [(item, m) for item, m in chunk if isinstance(m, _Masked) and m.status == "ok"]
            texts: dict[tuple[int, str], str] = {}
            if ready:
                # Seeded from the batch's first sample, as the runner: a resumed pass draws the same.
                torch.manual_seed(protocol.seed * 1_000_003 + ready[0][0][0].index)
                prompts = [m.prepared[c] for _, m in ready for c in CONDITIONS]
                outs = engine.generate(prompts)
                for n, ((sample, _), _m) in enumerate(ready):
                    for c, condition in enumerate(CONDITIONS):
                        texts[(sample.index, condition)] = outs[2 * n + c].text
            lines = []
            for (sample, line), masked in chunk:
                record = sample.record
                base = {"index": sample.index, "key": sample.key, "prompt_hash": sample.prompt_hash,
                        "output_sha": output_sha(line["output"]), "category": category(record)}
                if isinstance(masked, Failed):
                    stats["decode_failed"] += 1
                    lines.append({**base, "status": "decode_failed", "error": masked.error})
                    continue
                out = {**base, "status": masked.status, "spans": [list(s) for s in masked.spans],
                       "frame_timestamps": masked.timestamps, "original_prediction": line.get("prediction"),
                       "original_score": line.get("score")}
                if masked.status != "ok":
                    stats[masked.status] += 1
                    lines.append(out)
                    continue
                stats["asked"] += 1
                for condition in CONDITIONS:
                    text = texts[(sample.index, condition)]
                    prediction = extract_prediction(text, record, "strict")
                    out[condition] = {
                        "frames": [int(i) for i in np.flatnonzero(masked.masks[condition])],
                        "output": text, "prediction": prediction,
                        "changed": prediction != line.get("prediction"),
                        "score": score_answer(text, record, mode="strict", mra_variant=protocol.mra_variant),
                    }
                out["control"]["overlap"] = masked.overlap
                lines.append(out)
            writer.write(lines)
    finally:
        writer.close()
    stats["seconds"] = round(time.time() - started, 3)
    return stats


# --- the summary -------------------------------------------------------------------------------------
def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def _block(lines: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    asked = [line for line in lines if line["status"] == "ok"]
    out: dict[str, Any] = {"n": len(asked), "no_span": sum(line["status"] == "no_span" for line in lines),
                           "no_frames": sum(line["status"] == "no_frames" for line in lines)}
    for condition in CONDITIONS:
        out[f"{condition}_changed"] = _mean(float(line[condition]["changed"]) for line in asked)
    own, control = out["own_changed"], out["control_changed"]
    out["own_minus_control"] = None if own is None else own - control
    out["original_accuracy"] = _mean(float(line.get("original_score") or 0.0) for line in asked)
    for condition in CONDITIONS:
        out[f"{condition}_accuracy"] = _mean(float(line[condition]["score"]) for line in asked)
    out["masked_frames"] = _mean(len(line["own"]["frames"]) for line in asked)
    out["control_overlap"] = _mean(line["control"]["overlap"] for line in asked)
    return out


def reliance_summary(out_dir: str | Path, rows: Iterable[Mapping[str, Any]],
                     options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Reliance over the merged `ok` rows in the subset (module doc), from the reliance files.

    Over the re-asked samples: `own_changed` / `control_changed` (share whose answer changed),
    `own_minus_control`, the accuracies (original, own masked, control masked), the mean number of
    masked frames and the control's mean overlap with the own mask; counts of samples not re-asked
    (no_span, no_frames) and still `missing`; overall and per category."""
    if options is None:
        return {"status": "off", "reason": "reliance not requested (faithfulness.reliance.enabled=false)"}
    selection = RelianceOptions(**options)
    summary = summarise_pass(
        out_dir, RELIANCE, rows, keep=_finished, block=_block,
        wanted=lambda row: selection.selects(int(row["index"])) and row.get("problem_type") != "grounding")
    return {"status": "on", "subset": {"every": selection.every, "limit": selection.limit},
            "masking": "frames inside the model's own spans set to black; control: as many contiguous "
                       "frames elsewhere, overlapping the own mask least", **summary}


__all__ = ["RELIANCE", "RelianceOptions", "black_out", "control_frames", "frames_in_spans",
           "reliance_summary", "run_reliance"]
