"""Idempotent, race-safe creation of the tiny model and the synthetic shards that the tiny experiments
train on: each is built in a temporary directory next to its target and renamed into place, so
concurrent ranks (or jobs) never see a half-written directory; a target that exists is left alone.

Configs call these through `prepare:` nodes (`_target_` with arguments); the app runs them once per
process before training. Nothing here is test-specific.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

DONE = ".complete"


def _build_atomically(target: Path, build: Callable[[Path], Any]) -> bool:
    """Run build(tmp) and rename tmp to target; False if target was already complete."""
    if (target / DONE).is_file():
        return False
    if target.exists():
        # An incomplete target cannot come from us (we only rename complete builds): refuse to guess.
        raise FileExistsError(f"{target} exists but has no {DONE} marker; remove it or point the config "
                              "elsewhere")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        build(tmp)
        (tmp / DONE).write_text("")
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / DONE).is_file():  # lost a race only if the winner finished
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return True


def ensure_tiny_model(path: str | os.PathLike, *, seed: int = 0, vocab: str = "tiny",
                      sizes: dict[str, Any] | None = None, family: str = "qwen2_5_vl") -> Path:
    """A random tiny model of `family` (vt_model.families) at `path` (vt_model.tiny.write_tiny_model),
    built if missing."""
    from vt_model.families import family_from_pretrained, get_family
    from vt_model.tiny import write_tiny_model

    target = Path(path)
    _build_atomically(target, lambda tmp: write_tiny_model(tmp, vocab=vocab, seed=seed, family=family,
                                                           **dict(sizes or {})))
    built = family_from_pretrained(target)
    if built is not get_family(family):  # one path for every family: a stale directory fails here
        raise ValueError(f"{target} holds a tiny {built.name} model, not {family}; point the model's path "
                         "at another directory")
    return target


def ensure_synthetic_shards(out_dir: str | os.PathLike, *, num_train_clips: int = 256,
                            num_test_clips: int = 32, seed: int = 0, max_count: int = 64,
                            workers: int | None = None) -> Path:
    """The synthetic temporal-QA dataset (vt_data.synthetic) and its train/test shards under `out_dir`
    (`shards/train`, `shards/test`), built if missing. `workers`: encoding processes (None: vt-data's
    default, which spawns processes for large builds)."""
    from vt_data.shards.writer import write_shards
    from vt_data.synthetic import SynthConfig, build_dataset

    def build(tmp: Path) -> None:
        build_dataset(tmp, SynthConfig(num_train_clips=num_train_clips, num_test_clips=num_test_clips,
                                       seed=seed), progress=False, workers=workers)
        for split in ("train", "test"):
            write_shards(tmp / f"{split}.jsonl", tmp, tmp / "shards" / split, max_count=max_count,
                         progress=False)

    target = Path(out_dir)
    _build_atomically(target, build)
    return target
