"""Loaders from an annotation file to `VideoQA` records: the registry they live in, and what they share.

Two registries use this mechanism: vt-data's converters (`vt_data.converters.CONVERTERS`, source ->
`ConversionResult`) and vt-eval's benchmark loaders (`vt_eval.benchmarks.BENCHMARKS`, name ->
`Benchmark`). A loader is a function whose first parameter takes the annotation path and whose other
named parameters are its options; a `LoaderRegistry` registers it under a name, refuses silent
shadowing, and rejects unknown names and options with the list of valid ones.

The helpers are the ones every loader needs: `Loc` (errors that name the file, line or item, and
field; `Loc.need`, a typed field or such an error), `as_bool` (options arrive as strings from the command
line), video path templates, span clipping with counts, multiple-choice records, and `check_records`
(no loader hands on a record the trainers or the scorer would reject).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vt_data.records import RecordError, VideoQA, validate
from vt_data.timespan import Span, clip_span

Loader = Callable[..., Any]


class LoaderRegistry(dict[str, Loader]):
    """name -> loader. `kind` names a loader in messages ("converter"), `key` what a name stands for
    ("source"; default: `kind`). `harness_args` are parameters the caller fills, not options (e.g.
    `video_root`); `harness_options` are options the caller handles before the loader runs, listed
    among the valid ones."""

    def __init__(self, kind: str, *, key: str | None = None, harness_args: Iterable[str] = (),
                 harness_options: Iterable[str] = ()):
        super().__init__()
        self.kind, self.key = kind, key or kind
        self.harness_args, self.harness_options = tuple(harness_args), tuple(harness_options)

    def register(self, name: str, *, replace: bool = False) -> Callable[[Loader], Loader]:
        """Register `fn(path, **options)` under `name` (decorator).

        Re-registering a taken name raises unless `replace=True`, so two plugins cannot shadow each
        other by accident."""

        def decorator(fn: Loader) -> Loader:
            if name in self and self[name] is not fn and not replace:
                raise ValueError(f"a {self.kind} is already registered as {name!r}; pass replace=True")
            self[name] = fn
            return fn

        return decorator

    def loader(self, name: str) -> Loader:
        """The loader registered as `name`; ValueError listing the known names otherwise."""
        if name not in self:
            raise ValueError(f"unknown {self.key} {name!r}; known {self.key}s: {', '.join(sorted(self))}")
        return self[name]

    def check_options(self, name: str, options: Mapping[str, Any]) -> None:
        """ValueError listing the loader's options when `options` holds one it does not take (a loader
        with **kwargs takes any)."""
        params = list(inspect.signature(self[name]).parameters.values())
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            return
        # The first parameter takes the path; any other nameable parameter is an option.
        named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        accepted = [p.name for p in params[1:] if p.kind in named and p.name not in self.harness_args]
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            valid = accepted + list(self.harness_options)
            raise ValueError(f"{self.kind} {name!r} does not take option(s) {', '.join(unknown)}; "
                             f"its options: {', '.join(valid) or '(none)'}")


def as_bool(value: bool | str, name: str) -> bool:
    """A boolean option given as a bool or a CLI string (true/false, yes/no, 1/0, on/off)."""
    if isinstance(value, bool):
        return value
    lowered = str(value).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"option {name!r} must be true or false, got {value!r}")


# --- reading the input ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Loc:
    """Where in the input we are, so every error names the file, line/index, item and field."""

    path: Path
    line: int | None = None
    item: str | None = None

    def at(self, *, line: int | None = None, item: str | None = None) -> Loc:
        if item is not None and self.item is not None:
            item = f"{self.item} {item}"
        return dataclasses.replace(self, line=self.line if line is None else line,
                                   item=self.item if item is None else item)

    def error(self, message: str, field_name: str | None = None) -> RecordError:
        prefix = f"{self.item}: " if self.item else ""
        return RecordError(prefix + message, source=str(self.path), line=self.line, field_name=field_name)

    def need(self, obj: Any, key: str, kind: type | tuple[type, ...] = object, *,
             optional: bool = False) -> Any:
        """obj[key] of the item here, checked to be of `kind`; a missing (or null) key is None when
        `optional`, else an error."""
        if not isinstance(obj, dict):
            raise self.error(f"expected a JSON object, got {type(obj).__name__}")
        if key not in obj or obj[key] is None:
            if optional:
                return None
            raise self.error("is missing", key)
        value = obj[key]
        if not isinstance(value, kind):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise self.error(f"must be {names}, got {type(value).__name__}", key)
        return value


# --- building records -----------------------------------------------------------------------------
def format_path(template: str, **fields: Any) -> str:
    """A video path from a `path_template` option (`str.format` over `fields`); ValueError naming the
    available fields when the template uses another. An `ext` field (the `video_ext` option) gets its
    dot: "mp4" and ".mp4" both give ".mp4" ("" stays "")."""
    ext = fields.get("ext")
    if ext and not ext.startswith("."):
        fields["ext"] = f".{ext}"
    try:
        return template.format(**fields)
    except (KeyError, IndexError) as exc:
        raise ValueError(f"path_template {template!r} uses an unknown field {exc}; "
                         f"available: {', '.join(sorted(fields))}") from None


def fit_span(span: Span, duration: float | None, counts: Counter, kind: str) -> Span | None:
    """`span` clipped to [0, duration] (or just to start >= 0 without a duration), counting
    "<kind>_clipped" when it changed and "<kind>_dropped" when nothing of positive length is left."""
    fitted = clip_span(span, math.inf if duration is None else duration)
    if fitted is None:
        counts[f"{kind}_dropped"] += 1
    elif fitted != (span[0], span[1]):
        counts[f"{kind}_clipped"] += 1
    return fitted


def mc_record(problem: str, options: list[str], gold: str, **fields: Any) -> VideoQA:
    """A multiple-choice video record: the stripped question, "A. ..." options and the gold letter."""
    return VideoQA(problem=problem.strip(), options=options, problem_type="multiple choice",
                   solution=f"<answer>{gold}</answer>", data_type="video", **fields)


def check_records(records: Iterable[VideoQA], producer: str, source: str | Path) -> None:
    """RecordError for the first record that fails `validate`, naming `producer` and `source`."""
    for index, record in enumerate(records):
        problems = validate(record)
        if problems:
            raise RecordError(f"{producer} produced an invalid record #{index} ({record.key}): "
                              + "; ".join(str(p) for p in problems), source=str(source))
