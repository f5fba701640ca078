"""Run a model over a benchmark: batched generation, predictions written as they are produced,
resume, data-parallel shards and their merge, and a `results.json` that states everything.

    from vt_eval.benchmarks import load_benchmark
    from vt_eval.protocol import get_protocol
    from vt_eval.runner import evaluate

    bench = load_benchmark("synthetic", "runs/assets/synthetic")
    results = evaluate("runs/assets/qwen25vl-tiny", bench, get_protocol("tiny_cpu"), "runs/eval/demo")
    results["summary"]["accuracy"]

Files in `out_dir` (one evaluation per directory; the CLI derives it from model, protocol and benchmark):

- `run.json`: the manifest, identical for every rank: benchmark (name, metric, facts), protocol, model
  (path, model_type, parameter count, sha256 of every weights file), backend, dtype, package versions
  and the sample plan `[[index, key, prompt_hash], ...]`. A rerun whose benchmark, weights, protocol,
  backend or dtype differ is refused (`RunMismatchError`) instead of mixing two runs in one file.
- `predictions.jsonl` (one process) or `predictions.rank{r}-of-{w}.jsonl` (rank r of w): one JSON line
  per sample, appended as each batch finishes, flushed and fsynced per batch. A line is
  `{index, key, prompt_hash, status: "ok", output, <the score_sample row>, finished, num_output_tokens,
  num_prompt_tokens, num_frames, timing}`; a video that cannot be decoded gives
  `{index, key, prompt_hash, status: "decode_failed", path, error, category}` instead (never a
  substitute video: method.md §10 item 10).
- `rank{r}-of-{w}.json`: what each invocation of that process did (resumed, generated, failed,
  seconds), appended per invocation.
- `predictions.jsonl` after the merge: every planned sample's current line, in plan order, re-scored
  against the current records (a corrected gold answer or a scorer fix reaches kept outputs too).
  `predictions.superseded.jsonl`: lines the merge dropped or re-scored (stale prompt hash, duplicates,
  retried decode failures, old scores).
- `results.json`: the manifest without the plan, plus `summary` (`vt_eval.metrics.aggregate` over the
  `ok` lines, with the counts), `counts` {planned, done, failed_decode, missing}, `failed` (key, path,
  error), `complete`, and `run` (timings and per-rank invocation stats: the only fields that differ
  between an interrupted-and-resumed run and an uninterrupted one).

Resume: a sample is done when some predictions file in `out_dir` holds an `ok` line with its key and
its current prompt hash. A rerun reads every predictions file, truncates a torn last line of its own
file (a crash mid-write; a bad line followed by good ones is corruption and raises), skips what is
done, retries failed decodes, and appends the rest. Batches are the pending samples in plan order,
so a run interrupted between batches resumes with the same batches an uninterrupted run would have.

Data parallel: one process per GPU, each given `rank` and `world_size` (or the launcher's RANK /
WORLD_SIZE or SLURM_PROCID / SLURM_NTASKS; `resolve_rank`). Rank r takes plan indices r, r + w, ...
(strided, so every rank sees every part of the benchmark) and writes its own file; no process group
is needed. A rank that finishes merges when every planned sample is accounted for, so the last rank
to finish writes the complete results; `merge(out_dir)` (`vt-eval merge DIR`) does it by hand.

Backends: `hf` (vt_model.generation on CPU or one GPU) and `vllm` (`VLLMEngine`, only when vLLM is
installed: an optional extra, not tested here).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vt_data.records import VideoQA
from vt_eval.benchmarks import Benchmark
from vt_eval.metrics import aggregate, score_sample
from vt_eval.protocol import Protocol, prompt_hash

log = logging.getLogger("vt_eval")

MANIFEST = "run.json"
RESULTS = "results.json"
PREDICTIONS = "predictions.jsonl"
SUPERSEDED = "predictions.superseded.jsonl"
RESULTS_SCHEMA = "vt-eval/results/v1"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
# Fields that identify a run: a rerun that differs in any of them is refused (RunMismatchError).
IDENTITY = ("benchmark", "weights_sha256", "protocol_fingerprint", "backend", "dtype")
# Packages whose versions every result records.
VERSIONED = ("vt-data", "vt-model", "vt-eval", "torch", "transformers", "tokenizers", "decord", "av", "numpy")


class RunMismatchError(RuntimeError):
    """out_dir already holds a run of another model, benchmark, protocol, backend or dtype."""


# --- the plan ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sample:
    """One planned evaluation: the record, its position in the benchmark, its rendered prompt."""

    index: int
    key: str
    record: VideoQA
    template: str
    prompt_text: str  # rendered without frame timestamps (they depend on the decoded video)
    prompt_hash: str


def sample_keys(records: Sequence[VideoQA]) -> list[str]:
    """`record.key` per record; a repeated key gets "#2", "#3", ... in order, so keys stay unique."""
    seen: dict[str, int] = {}
    keys = []
    for record in records:
        key = record.key
        seen[key] = seen.get(key, 0) + 1
        keys.append(key if seen[key] == 1 else f"{key}#{seen[key]}")
    return keys


def build_plan(
    benchmark: Benchmark, tokenizer: Any, protocol: Protocol, limit: int | None = None
) -> list[Sample]:
    """Every sample to evaluate (the first `limit` records), each with its prompt and prompt hash."""
    from vt_model.prompts import build_messages, render_prompt

    records = benchmark.records if limit is None else benchmark.records[: int(limit)]
    plan = []
    for index, (record, key) in enumerate(zip(records, sample_keys(records), strict=True)):
        template = protocol.template_for(record.problem_type)
        text = render_prompt(tokenizer, build_messages(record, template))
        plan.append(Sample(index, key, record, template, text, prompt_hash(text, protocol)))
    return plan


def shard_indices(num_samples: int, rank: int, world_size: int) -> list[int]:
    """Plan indices of rank `rank` of `world_size`: rank, rank + world_size, ..."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return list(range(rank, num_samples, world_size))


def resolve_rank(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """Explicit values, else torchrun's RANK / WORLD_SIZE, else SLURM_PROCID / SLURM_NTASKS, else (0, 1)."""
    env = os.environ
    if rank is None:
        rank = int(env.get("RANK", env.get("SLURM_PROCID", 0)))
    if world_size is None:
        world_size = int(env.get("WORLD_SIZE", env.get("SLURM_NTASKS", 1)))
    shard_indices(0, rank, world_size)  # validates
    return rank, world_size


def predictions_name(rank: int, world_size: int) -> str:
    return PREDICTIONS if world_size == 1 else f"predictions.rank{rank}-of-{world_size}.jsonl"


# --- JSONL that survives a crash -------------------------------------------------------------------------
@dataclass
class ReadResult:
    rows: list[dict[str, Any]]
    torn_bytes: int  # bytes after the last complete line (0: the file ends cleanly)


def read_predictions(path: str | os.PathLike, *, repair: bool = False) -> ReadResult:
    """Read a predictions file. A tail of unparsable bytes after the last good line (a line torn by a
    crash, or NUL padding) is dropped, and with `repair=True` truncated from the file; an unparsable
    line followed by good ones raises ValueError (that is corruption, not a crash)."""
    path = Path(path)
    if not path.is_file():
        return ReadResult([], 0)
    data = path.read_bytes()
    rows: list[dict[str, Any]] = []
    good_end = 0  # byte offset just after the last good line
    bad_line: int | None = None
    pos = 0
    lineno = 0
    while pos < len(data):
        lineno += 1
        nl = data.find(b"\n", pos)
        complete = nl != -1
        end = nl + 1 if complete else len(data)
        raw = data[pos:end].strip()
        pos = end
        if not raw.strip(b"\x00"):
            continue
        try:
            row = json.loads(raw) if complete else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            row = None
        if not isinstance(row, dict):
            bad_line = bad_line or lineno
            continue
        if bad_line is not None:
            raise ValueError(f"{path}:{bad_line}: unparsable line followed by valid ones (corrupt file)")
        rows.append(row)
        good_end = end
    tail = data[good_end:]
    torn = len(tail) if tail.strip(b"\n\r\t ") else 0  # NUL padding counts as torn too
    if torn and repair:
        log.warning("%s: dropping a torn last line (%d bytes) left by an interrupted run", path, torn)
        with path.open("r+b") as fh:
            fh.truncate(good_end)
            fh.flush()
            os.fsync(fh.fileno())
    return ReadResult(rows, torn)


class PredictionWriter:
    """Appends one JSON line per sample; each batch is flushed and fsynced before the next starts."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._fh = self.path.open("a", encoding="utf-8")

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        for row in rows:
            # One write per line: a crash can tear only the line being written.
            self._fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()


def _write_json(path: Path, obj: Any) -> None:
    """Atomic: a reader sees the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def prediction_files(out_dir: Path) -> list[Path]:
    """predictions.jsonl first, then the rank files in name order (a fixed order for the merge)."""
    ranks = sorted(p for p in out_dir.glob("predictions.rank*-of-*.jsonl"))
    single = out_dir / PREDICTIONS
    return ([single] if single.is_file() else []) + ranks


def done_ids(out_dir: Path) -> set[tuple[str, str]]:
    """(key, prompt_hash) of every `ok` line in any predictions file of `out_dir`."""
    done = set()
    for path in prediction_files(out_dir):
        for row in read_predictions(path).rows:
            if row.get("status") == "ok":
                done.add((row["key"], row["prompt_hash"]))
    return done


# --- model identity and versions ----------------------------------------------------------------------
def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_sha256(model_path: str | os.PathLike, cache: str | os.PathLike | None = None) -> dict[str, Any]:
    """sha256 of every weights file of a model directory and one digest over them all.

    `cache`: a JSON file of {absolute path: [size, mtime_ns, sha256]}, so a 15 GB checkpoint is hashed
    once, not once per benchmark (an entry is reused only while size and mtime are unchanged)."""
    directory = Path(model_path).expanduser().resolve()
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    if not files:
        raise FileNotFoundError(f"{directory} holds no weights file ({', '.join(WEIGHT_SUFFIXES)})")
    table: dict[str, Any] = {}
    cache_path = Path(cache) if cache else None
    if cache_path and cache_path.is_file():
        with contextlib.suppress(json.JSONDecodeError, OSError):
            table = json.loads(cache_path.read_text())
    per_file = {}
    changed = False
    for path in files:
        stat = path.stat()
        entry = table.get(str(path))
        if entry and entry[0] == stat.st_size and entry[1] == stat.st_mtime_ns:
            per_file[path.name] = entry[2]
            continue
        per_file[path.name] = _file_sha256(path)
        table[str(path)] = [stat.st_size, stat.st_mtime_ns, per_file[path.name]]
        changed = True
    if cache_path and changed:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        _write_json(cache_path, table)
    overall = hashlib.sha256("".join(f"{n}\t{h}\n" for n, h in per_file.items()).encode()).hexdigest()
    return {"sha256": overall, "files": per_file}


def safetensors_parameters(model_path: str | os.PathLike) -> int | None:
    """Parameter count from the safetensors headers (no weights read); None without safetensors."""
    total, found = 0, False
    for path in sorted(Path(model_path).glob("*.safetensors")):
        with path.open("rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(length))
        for name, meta in header.items():
            if name != "__metadata__":
                found = True
                count = 1
                for dim in meta["shape"]:
                    count *= int(dim)
                total += count
    return total if found else None


def model_info(
    model_path: str | os.PathLike, *, weights_cache: str | os.PathLike | None = None
) -> dict[str, Any]:
    """Path, resolved config facts, parameter count and weights digest of a local model directory
    (method.md §10 item 7: the result names the model it actually ran)."""
    directory = Path(model_path).expanduser().resolve()
    config_file = directory / "config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    text = config.get("text_config") or {}
    weights = weights_sha256(directory, weights_cache)
    return {
        "path": str(directory),
        "model_type": config.get("model_type"),
        "architectures": config.get("architectures"),
        "name_or_path": config.get("_name_or_path"),
        "hidden_size": text.get("hidden_size", config.get("hidden_size")),
        "num_hidden_layers": text.get("num_hidden_layers", config.get("num_hidden_layers")),
        "num_parameters": safetensors_parameters(directory),
        "config_sha256": _file_sha256(config_file) if config_file.is_file() else None,
        "weights_sha256": weights["sha256"],
        "weights_files": weights["files"],
    }


def package_versions(extra: Iterable[str] = ()) -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in (*VERSIONED, *extra):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


# --- engines -----------------------------------------------------------------------------------------
@dataclass
class Completion:
    text: str
    num_tokens: int
    finished: bool  # ended with a stop token (False: cut at max_new_tokens)
    num_prompt_tokens: int | None = None


def resolve_device(device: str, rank: int = 0, world_size: int = 1) -> str:
    """ "auto" -> cuda when available, else cpu; "cuda" with several ranks -> this rank's local GPU
    (LOCAL_RANK or SLURM_LOCALID; one process per GPU)."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and world_size > 1:
        local = int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", rank)))
        device = f"cuda:{local % max(1, torch.cuda.device_count())}"
    return device


class HFEngine:
    """vt_model's batched generation (left padding, the video encoded once) on CPU or one GPU."""

    name = "hf"

    def __init__(
        self,
        model_path: str | os.PathLike,
        tokenizer: Any,
        protocol: Protocol,
        video_config: Any,
        *,
        device: str = "cpu",
        dtype: str = "float32",
        attn_implementation: str = "sdpa",
    ):
        from vt_model.loading import load_model

        self.tokenizer, self.protocol, self.video_config = tokenizer, protocol, video_config
        self.device = device
        self.model = load_model(
            model_path, dtype=dtype, attn_implementation=attn_implementation, device=device
        ).eval()
        self.num_parameters = sum(p.numel() for p in self.model.parameters())

    def prepare(self, sample: Sample, clip: Any) -> dict[str, Any]:
        from vt_model.processing import preprocess_video
        from vt_model.prompts import encode_prompt

        inputs = preprocess_video(clip.frames, clip.timestamps, self.video_config)
        return encode_prompt(
            self.tokenizer,
            sample.record,
            inputs,
            sample.template,
            timestamps=clip.timestamps,
            include_timestamps=self.protocol.include_timestamps,
        )

    def generate(self, prepared: Sequence[dict[str, Any]]) -> list[Completion]:
        from vt_model.generation import generate

        out = generate(
            self.model, self.tokenizer, list(prepared), num_return_sequences=1, **self.protocol.sampling()
        )
        return [
            Completion(
                text=out.texts[i][0],
                num_tokens=len(out.sequences[i][0]),
                finished=bool(out.finished[i][0]),
                num_prompt_tokens=out.prompt_lengths[i],
            )
            for i in range(len(prepared))
        ]


class VLLMEngine:
    """A small adapter to vLLM (optional extra `vt-eval[vllm]`; GPU only; not tested in this repo).

    The prompt is our rendered prompt (one `<|video_pad|>`, which vLLM expands) and the frames are the
    ones vt_data decoded, so frame sampling matches the `hf` backend; the resize to the protocol's
    pixel budget is done by vLLM's Qwen2.5-VL processor (min/max_pixels passed through)."""

    name = "vllm"

    def __init__(
        self,
        model_path: str | os.PathLike,
        tokenizer: Any,
        protocol: Protocol,
        video_config: Any,
        *,
        device: str = "cuda",
        dtype: str = "bfloat16",
        max_model_len: int = 32768,
        **_: Any,
    ):
        try:
            import vllm
        except ImportError:
            raise ImportError(
                "backend='vllm' needs the vllm package, which is not installed (an optional "
                "extra: pip install 'vt-eval[vllm]' on a GPU machine); use backend='hf'"
            ) from None
        self.tokenizer, self.protocol = tokenizer, protocol
        self.llm = vllm.LLM(
            model=str(model_path),
            dtype=dtype,
            max_model_len=max_model_len,
            seed=protocol.seed,
            limit_mm_per_prompt={"video": 1},
            mm_processor_kwargs={
                "min_pixels": video_config.min_pixels,
                "max_pixels": video_config.max_pixels,
            },
        )
        self.params = vllm.SamplingParams(
            temperature=protocol.temperature if protocol.do_sample else 0.0,
            top_p=protocol.top_p,
            top_k=protocol.top_k or -1,
            max_tokens=protocol.max_new_tokens,
            seed=protocol.seed,
        )
        self.num_parameters = None

    def prepare(self, sample: Sample, clip: Any) -> dict[str, Any]:
        from vt_model.prompts import build_messages, render_prompt

        text = sample.prompt_text
        if self.protocol.include_timestamps:
            text = render_prompt(
                self.tokenizer,
                build_messages(
                    sample.record, sample.template, timestamps=clip.timestamps, include_timestamps=True
                ),
            )
        return {"prompt": text, "multi_modal_data": {"video": clip.frames}}

    def generate(self, prepared: Sequence[dict[str, Any]]) -> list[Completion]:
        outs = self.llm.generate(list(prepared), self.params, use_tqdm=False)
        return [
            Completion(
                text=o.outputs[0].text,
                num_tokens=len(o.outputs[0].token_ids),
                finished=o.outputs[0].finish_reason == "stop",
                num_prompt_tokens=len(o.prompt_token_ids or []),
            )
            for o in outs
        ]


ENGINES: dict[str, type] = {"hf": HFEngine, "vllm": VLLMEngine}


def register_engine(name: str, engine_cls: type, *, replace: bool = False) -> type:
    """Add a backend: a class built as `cls(model_path, tokenizer, protocol, video_config, *, device, dtype,
    attn_implementation, **engine_options)` with `prepare(sample, clip)`, `generate(prepared) ->
    [Completion]` and a `num_parameters` attribute (tests register a scripted one)."""
    if name in ENGINES and ENGINES[name] is not engine_cls and not replace:
        raise ValueError(f"an engine is already registered as {name!r}; pass replace=True")
    ENGINES[name] = engine_cls
    return engine_cls


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
def _manifest(
    benchmark: Benchmark,
    protocol: Protocol,
    model: dict[str, Any],
    plan: Sequence[Sample],
    *,
    backend: str,
    dtype: str,
    world_size: int,
    label: str,
    paper_model: str | None,
    video_config: Any,
    limit: int | None,
) -> dict[str, Any]:
    return {
        "schema": RESULTS_SCHEMA,
        "benchmark": {
            "name": benchmark.name,
            "metric": benchmark.metric,
            "category_field": benchmark.category_field,
            "num_records": len(benchmark.records),
            "video_root": str(benchmark.video_root) if benchmark.video_root else None,
            "facts": benchmark.facts,
        },
        "protocol": protocol.to_dict(),
        "protocol_fingerprint": protocol.fingerprint(),
        "model": {"label": label, "paper_model": paper_model, **model},
        "preprocessing": video_config.to_dict(),
        "backend": backend,
        "dtype": dtype,
        "world_size": world_size,
        "limit": limit,
        "versions": package_versions(["vllm"] if backend == "vllm" else []),
        "samples": [[s.index, s.key, s.prompt_hash] for s in plan],
    }


def _identity(manifest: dict[str, Any]) -> dict[str, Any]:
    return {
        "benchmark": manifest["benchmark"]["name"],
        "weights_sha256": manifest["model"]["weights_sha256"],
        "protocol_fingerprint": manifest["protocol_fingerprint"],
        "backend": manifest["backend"],
        "dtype": manifest["dtype"],
    }


def _check_manifest(out_dir: Path, manifest: dict[str, Any]) -> None:
    path = out_dir / MANIFEST
    if not path.is_file():
        return
    old = _identity(json.loads(path.read_text()))
    new = _identity(manifest)
    diff = {k: (old[k], new[k]) for k in IDENTITY if old[k] != new[k]}
    if diff:
        lines = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in diff.items())
        raise RunMismatchError(f"{out_dir} holds another evaluation ({lines}); evaluate into a new directory")


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
    module docstring describes the files, resume and sharding). Returns the results dict (what
    results.json holds; `complete` is False while other ranks still have samples to do).

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
    manifest = _manifest(
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
    _check_manifest(out_dir, manifest)
    _write_json(out_dir / MANIFEST, manifest)

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
        engine_cls = ENGINES[backend]
        engine = engine_cls(
            model_path,
            tokenizer,
            protocol,
            video_config,
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
        return engine.prepare(sample, clip), len(clip.frames)

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
    _record_invocation(out_dir / f"rank{rank}-of-{world_size}.json", stats)
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
    _write_json(
        path, {"rank": stats["rank"], "world_size": stats["world_size"], "invocations": [*history, stats]}
    )


def _run_batch(
    chunk: Sequence[tuple[Sample, Any]],
    engine: Any,
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


# --- merge -------------------------------------------------------------------------------------------
def _primary(summary: dict[str, Any], protocol: dict[str, Any]) -> float | None:
    key = "accuracy" if protocol.get("answer_extraction", "strict") == "strict" else "accuracy_lenient"
    return summary.get(key)


def merge(
    out_dir: str | os.PathLike,
    *,
    write: bool = True,
    rescore: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Combine every predictions file of `out_dir` into the current view of its plan (run.json).

    Per planned (key, prompt_hash): the first `ok` line found (predictions.jsonl, then rank files in
    name order), else the last `decode_failed` line, else missing. `rescore(line) -> line` re-scores
    kept outputs (evaluate passes one, so a corrected gold answer or a scorer fix reaches resumed
    samples too). With `write` and nothing missing, predictions.jsonl is rewritten in plan order
    (when it differs), dropped or re-scored lines are appended to predictions.superseded.jsonl, and
    results.json is written. Returns the results dict."""
    out_dir = Path(out_dir)
    manifest = json.loads((out_dir / MANIFEST).read_text())
    plan = [(int(i), k, h) for i, k, h in manifest["samples"]]
    wanted = {(k, h) for _, k, h in plan}
    ok: dict[tuple[str, str], dict[str, Any]] = {}
    failed: dict[tuple[str, str], dict[str, Any]] = {}
    all_lines: list[dict[str, Any]] = []
    for path in prediction_files(out_dir):
        for row in read_predictions(path).rows:
            all_lines.append(row)
            ident = (row.get("key"), row.get("prompt_hash"))
            if ident not in wanted:
                continue
            if row.get("status") == "ok":
                ok.setdefault(ident, row)
            else:
                failed[ident] = row
    merged, rows, failures, missing = [], [], [], []
    for index, key, digest in plan:
        ident = (key, digest)
        if ident in ok:
            line = {**ok[ident], "index": index}
            if rescore is not None:
                line = rescore(line)
            merged.append(line)
            rows.append(line)
        elif ident in failed:
            line = {**failed[ident], "index": index}
            merged.append(line)
            failures.append({"key": key, "path": line.get("path"), "error": line.get("error")})
        else:
            missing.append(key)
    counts = {
        "planned": len(plan),
        "done": len(rows),
        "failed_decode": len(failures),
        "missing": len(missing),
    }
    summary = aggregate(rows, metric=manifest["benchmark"]["metric"])
    summary["counts"] = counts
    complete = not missing
    results = {k: v for k, v in manifest.items() if k != "samples"}
    results.update(
        {
            "summary": summary,
            "primary_accuracy": _primary(summary, manifest["protocol"]),
            "counts": counts,
            "failed": failures,
            "complete": complete,
            "run": _run_stats(out_dir, manifest),
        }
    )
    if write and complete:
        _rewrite_predictions(out_dir, merged, all_lines)
        _write_json(out_dir / RESULTS, results)
    elif missing:
        log.info(
            "%s: %d of %d samples still missing (other ranks running?); results.json not written",
            out_dir,
            len(missing),
            len(plan),
        )
    return results


def _rewrite_predictions(
    out_dir: Path, merged: list[dict[str, Any]], all_lines: list[dict[str, Any]]
) -> None:
    path = out_dir / PREDICTIONS
    current = read_predictions(path).rows
    if current == merged:
        return
    kept = {json.dumps(line, sort_keys=True) for line in merged}
    dropped, seen = [], set()
    for line in all_lines:
        text = json.dumps(line, sort_keys=True)
        if text not in kept and text not in seen:
            seen.add(text)
            dropped.append(line)
    if dropped:
        with (out_dir / SUPERSEDED).open("a", encoding="utf-8") as fh:
            for line in dropped:
                fh.write(json.dumps(line, ensure_ascii=False) + "\n")
    _write_jsonl(path, merged)


def _run_stats(out_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    world_size = manifest.get("world_size", 1)
    ranks = []
    for rank in range(world_size):
        path = out_dir / f"rank{rank}-of-{world_size}.json"
        if path.is_file():
            with contextlib.suppress(json.JSONDecodeError, OSError):
                ranks.append(json.loads(path.read_text()))
    # Throughput of the invocations that generated something: samples over the slowest rank's loop time.
    runs = [inv for r in ranks for inv in r.get("invocations", []) if inv.get("generated")]
    generated = sum(inv["generated"] for inv in runs)
    seconds = sum(inv.get("loop_seconds", 0.0) for inv in runs) / max(1, len(ranks))
    return {
        "ranks": ranks,
        "merged_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "samples_per_second": round(generated / seconds, 4) if generated and seconds else None,
    }


__all__ = [
    "evaluate",
    "merge",
    "build_plan",
    "shard_indices",
    "resolve_rank",
    "read_predictions",
    "PredictionWriter",
    "weights_sha256",
    "model_info",
    "package_versions",
    "HFEngine",
    "VLLMEngine",
    "RunMismatchError",
    "Sample",
    "Completion",
    "ENGINES",
    "register_engine",
]
