"""What an evaluation ran: the model's weights digest and facts, package versions, and the manifest
`run.json` that ties a run directory to one model, benchmark, protocol, backend and dtype.

`run.json` is identical for every rank: benchmark (name, metric, facts), protocol, model (path,
model_type, parameter count, sha256 of every weights file), backend, dtype, package versions and the
sample plan `[[index, key, prompt_hash], ...]`. A rerun whose benchmark, weights, protocol, backend or
dtype differ is refused (`RunMismatchError`) instead of mixing two runs in one file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from vt_data.files import write_json_atomic
from vt_eval.benchmarks import Benchmark
from vt_eval.plan import Sample
from vt_eval.protocol import Protocol

MANIFEST = "run.json"
RESULTS_SCHEMA = "vt-eval/results/v1"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
# Fields that identify a run: a rerun that differs in any of them is refused (RunMismatchError).
IDENTITY = ("benchmark", "weights_sha256", "protocol_fingerprint", "backend", "dtype")
# Packages whose versions every result records.
VERSIONED = ("vt-data", "vt-model", "vt-eval", "torch", "transformers", "tokenizers", "decord", "av", "numpy")


class RunMismatchError(RuntimeError):
    """out_dir already holds a run of another model, benchmark, protocol, backend or dtype."""


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
        write_json_atomic(cache_path, table)
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


# --- the manifest ------------------------------------------------------------------------------------
def build_manifest(
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


def check_manifest(out_dir: Path, manifest: dict[str, Any]) -> None:
    """Raise RunMismatchError when `out_dir` holds a run that differs from `manifest` in IDENTITY."""
    path = out_dir / MANIFEST
    if not path.is_file():
        return
    old = _identity(json.loads(path.read_text()))
    new = _identity(manifest)
    diff = {k: (old[k], new[k]) for k in IDENTITY if old[k] != new[k]}
    if diff:
        lines = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in diff.items())
        raise RunMismatchError(f"{out_dir} holds another evaluation ({lines}); evaluate into a new directory")


__all__ = [
    "IDENTITY",
    "MANIFEST",
    "RESULTS_SCHEMA",
    "RunMismatchError",
    "build_manifest",
    "check_manifest",
    "model_info",
    "package_versions",
    "safetensors_parameters",
    "weights_sha256",
]
