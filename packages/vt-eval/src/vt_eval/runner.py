"""Run a model over a benchmark: batched generation, predictions written as they are produced, resume,
and the data-parallel shard of this process; the last rank to finish writes a `results.json` that
states everything.

    from vt_eval.benchmarks import load_benchmark
    from vt_eval.protocol import get_protocol
    from vt_eval.runner import evaluate

    bench = load_benchmark("synthetic", "runs/assets/synthetic")
    results = evaluate("runs/assets/qwen25vl-tiny", bench, get_protocol("tiny_cpu"), "runs/eval/demo")
    results["summary"]["accuracy"]

One evaluation per directory (the CLI derives `out_dir` from model, protocol and benchmark). The pieces
live beside this module: the plan and its shards (vt_eval.plan), the predictions files and what resume
reads from them (vt_eval.predictions), `run.json` and the refusal to mix two runs (vt_eval.run_identity),
and the merge into `predictions.jsonl` and `results.json` (vt_eval.merge). This module adds
`rank{r}-of-{w}.json`: what each invocation of that rank did (resumed, generated, failed, seconds),
appended per invocation.

Batches are the pending samples in plan order, so a run interrupted between batches resumes with the
same batches an uninterrupted run would have; each batch is seeded from its first sample.

Backends: any name in `vt_model.engines.ENGINES`: `hf` (vt_model.generation on CPU or one GPU) and
`vllm` (only when vLLM is installed: an optional extra, not tested here).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vt_data.files import write_json_atomic
from vt_data.records import VideoQA
from vt_eval.benchmarks import Benchmark
from vt_eval.merge import invocations_name, merge
from vt_eval.metrics import score_sample
from vt_eval.plan import Sample, build_plan, shard_indices
from vt_eval.predictions import PredictionWriter, done_ids, predictions_name, read_predictions
from vt_eval.protocol import Protocol
from vt_eval.run_identity import MANIFEST, build_manifest, check_manifest, model_info
from vt_model.engines import ENGINES, Completion, GenerationEngine, build_engine, resolve_device

log = logging.getLogger("vt_eval")


# --- decoding ahead of generation ---------------------------------------------------------------------
@dataclass
class _Failed:
    error: str


def _prefetch(
    fn: Callable[[Sample], Any], items: Sequence[Sample], workers: int
) -> Iterator[tuple[Sample, Any]]:
    """(item, fn(item)) in order; with workers > 0, up to 2 × workers items are decoded ahead on threads
    (decord and PyAV release the GIL) while the model generates."""
    if workers <= 0:
        for item in items:
            yield item, fn(item)
        return
    from concurrent.futures import ThreadPoolExecutor

    lookahead = 2 * workers
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vt-eval-decode") as pool:
        pending: deque = deque()
        it = iter(items)
        for item in it:
            pending.append((item, pool.submit(fn, item)))
            if len(pending) >= lookahead:
                break
        while pending:
            item, future = pending.popleft()
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(fn, nxt)))
            yield item, future.result()


def video_path(benchmark: Benchmark, record: VideoQA) -> Path:
    path = Path(record.path)
    return path if path.is_absolute() or benchmark.video_root is None else benchmark.video_root / path


# --- the run -----------------------------------------------------------------------------------------
def evaluate(
    model_path: str | os.PathLike,
    benchmark: Benchmark,
    protocol: Protocol,
    out_dir: str | os.PathLike,
    *,
    batch_size: int = 4,
    limit: int | None = None,
    backend: str = "hf",
    device: str = "cpu",
    rank: int = 0,
    world_size: int = 1,
    dtype: str = "float32",
    attn_implementation: str = "sdpa",
    num_workers: int = 2,
    label: str | None = None,
    paper_model: str | None = None,
    weights_cache: str | os.PathLike | None = None,
    merge_when_complete: bool = True,
    on_batch: Callable[[int, list[dict[str, Any]]], None] | None = None,
    engine_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate the model in `model_path` on `benchmark` under `protocol`, writing into `out_dir` (the
    docstrings of this module and the modules it names describe the files, resume and sharding).
    Returns the results dict (what results.json holds; `complete` is False while other ranks still
    have samples to do).

    batch_size: prompts per generate call. limit: the first N records only. backend: "hf" | "vllm".
    device: "cpu" | "cuda" | "cuda:N" | "auto". rank / world_size: this process's shard.
    num_workers: threads decoding videos ahead of generation (0: inline). label: the model's name in
    reports (default: the directory name); paper_model: the paper's Table 1 row to compare with.
    on_batch(batch_number, lines): called after each batch is on disk (tests interrupt here).
    """
    from vt_data.video import VideoDecodeError, read_video
    from vt_model.loading import load_tokenizer
    from vt_model.processing import VideoProcessorConfig

    if backend not in ENGINES:
        raise ValueError(f"backend must be one of {sorted(ENGINES)}, got {backend!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    shard_indices(0, rank, world_size)
    started = time.time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = Path(model_path).expanduser()

    tokenizer = load_tokenizer(model_path)
    try:
        model_video = VideoProcessorConfig.from_pretrained(model_path)
    except FileNotFoundError:
        model_video = None
    video_config = protocol.video_config(model_video)
    plan = build_plan(benchmark, tokenizer, protocol, limit)
    info = model_info(model_path, weights_cache=weights_cache)
    manifest = build_manifest(
        benchmark,
        protocol,
        info,
        plan,
        backend=backend,
        dtype=dtype,
        world_size=world_size,
        label=label or model_path.resolve().name,
        paper_model=paper_model,
        video_config=video_config,
        limit=limit,
    )
    check_manifest(out_dir, manifest)
    write_json_atomic(out_dir / MANIFEST, manifest)

    own_file = out_dir / predictions_name(rank, world_size)
    read_predictions(own_file, repair=True)  # a torn line from a crash goes before anything is appended
    done = done_ids(out_dir)
    mine = [plan[i] for i in shard_indices(len(plan), rank, world_size)]
    pending = [s for s in mine if (s.key, s.prompt_hash) not in done]
    stats: dict[str, Any] = {
        "rank": rank,
        "world_size": world_size,
        "host": socket.gethostname(),
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "shard": len(mine),
        "resumed": len(mine) - len(pending),
        "generated": 0,
        "failed_decode": 0,
        "batches": 0,
        "generate_seconds": 0.0,
    }
    log.info(
        "rank %d/%d: %d samples in shard, %d done before, %d to run",
        rank,
        world_size,
        len(mine),
        stats["resumed"],
        len(pending),
    )

    device = resolve_device(device, rank, world_size)
    stats["device"] = device
    engine = None
    if pending:
        engine = build_engine(
            backend,
            model_path,
            tokenizer,
            video_config,
            sampling=protocol.sampling(),
            include_timestamps=protocol.include_timestamps,
            seed=protocol.seed,
            device=device,
            dtype=dtype,
            attn_implementation=attn_implementation,
            **(engine_options or {}),
        )
        stats["num_parameters_loaded"] = engine.num_parameters

    def prepare(sample: Sample) -> Any:
        path = video_path(benchmark, sample.record)
        try:
            clip = read_video(
                str(path),
                num_frames=protocol.num_frames,
                fps=protocol.fps,
                max_frames=protocol.max_frames,
                rule=protocol.frame_rule,
                backend=protocol.video_backend,
            )
        except VideoDecodeError as exc:
            return _Failed(str(exc))
        prepared = engine.prepare(sample.record, sample.template, clip, prompt_text=sample.prompt_text)
        return prepared, len(clip.frames)

    loop_start = time.time()
    writer = PredictionWriter(own_file) if pending else None
    try:
        stream = _prefetch(prepare, pending, num_workers)
        for number, first in enumerate(range(0, len(pending), batch_size)):
            chunk = [next(stream) for _ in pending[first : first + batch_size]]
            lines = _run_batch(chunk, engine, benchmark, protocol, stats)
            writer.write(lines)
            stats["batches"] += 1
            if on_batch is not None:
                on_batch(number, lines)
    finally:
        if writer is not None:
            writer.close()
    stats["loop_seconds"] = round(time.time() - loop_start, 3)
    stats["samples_per_second"] = (
        round(stats["generated"] / stats["loop_seconds"], 4)
        if stats["generated"] and stats["loop_seconds"] > 0
        else None
    )
    stats["wall_seconds"] = round(time.time() - started, 3)
    stats["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    _record_invocation(out_dir / invocations_name(rank, world_size), stats)
    by_key = {sample.key: sample for sample in plan}

    def rescore(line: dict[str, Any]) -> dict[str, Any]:
        record = by_key[line["key"]].record
        row = score_sample(
            line["output"], record, category=benchmark.category(record), mra_variant=protocol.mra_variant
        )
        row.pop("key")
        return {**line, **row}

    return merge(out_dir, write=merge_when_complete, rescore=rescore)


def _record_invocation(path: Path, stats: dict[str, Any]) -> None:
    """Append this invocation's stats to the rank's history (a resumed run keeps its first part's)."""
    history: list[dict[str, Any]] = []
    if path.is_file():
        with contextlib.suppress(json.JSONDecodeError, OSError):
            history = json.loads(path.read_text()).get("invocations", [])
    write_json_atomic(
        path, {"rank": stats["rank"], "world_size": stats["world_size"], "invocations": [*history, stats]}
    )


def _run_batch(
    chunk: Sequence[tuple[Sample, Any]],
    engine: GenerationEngine,
    benchmark: Benchmark,
    protocol: Protocol,
    stats: dict[str, Any],
) -> list[dict[str, Any]]:
    """Generate for the decoded samples of one batch; lines for all of them, in plan order."""
    import torch

    ready = [(s, p) for s, p in chunk if not isinstance(p, _Failed)]
    completions: dict[int, Completion] = {}
    seconds = 0.0
    if ready:
        # Seeded per batch from the batch's first sample: a resumed run draws what an uninterrupted one drew.
        torch.manual_seed(protocol.seed * 1_000_003 + ready[0][0].index)
        t0 = time.time()
        outs = engine.generate([p[0] for _, p in ready])
        seconds = time.time() - t0
        completions = {s.index: c for (s, _), c in zip(ready, outs, strict=True)}
        stats["generate_seconds"] = round(stats["generate_seconds"] + seconds, 3)
    lines = []
    for sample, prepared in chunk:
        category = benchmark.category(sample.record)
        base = {"index": sample.index, "key": sample.key, "prompt_hash": sample.prompt_hash}
        if isinstance(prepared, _Failed):
            stats["failed_decode"] += 1
            log.warning("skipping %s: %s", sample.key, prepared.error)
            lines.append(
                {
                    **base,
                    "status": "decode_failed",
                    "path": sample.record.path,
                    "error": prepared.error,
                    "category": category,
                }
            )
            continue
        completion = completions[sample.index]
        row = score_sample(
            completion.text, sample.record, category=category, mra_variant=protocol.mra_variant
        )
        row.pop("key")
        lines.append(
            {
                **base,
                "status": "ok",
                "output": completion.text,
                **row,
                "finished": completion.finished,
                "num_output_tokens": completion.num_tokens,
                "num_prompt_tokens": completion.num_prompt_tokens,
                "num_frames": prepared[1],
                "timing": {"batch_seconds": round(seconds, 4), "batch_size": len(ready)},
            }
        )
        stats["generated"] += 1
    return lines


__all__ = ["evaluate", "video_path"]
