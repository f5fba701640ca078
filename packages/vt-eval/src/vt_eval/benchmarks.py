"""Benchmark registry: one small loader per benchmark, from its official annotation format to records.

`load_benchmark(name, annotation_path, *, video_root=None, **options)` runs the loader registered
under `name` and returns a `Benchmark`: the `VideoQA` records (vt-data's schema, so the one prompt
builder and the one scorer serve every benchmark), the metric that aggregates them, the record field
that holds the benchmark's own category, the video root, and `facts`: a JSON-able dict of everything
the loader counted (excluded, skipped, clipped, repaired), so nothing is dropped silently and every
result file can state it. Formats and quirks: shared/docs/benchmarks.md (sections cited per loader).

Benchmarks whose source vt-data already converts (Video-Holmes, VRBench, Video-R1 JSON, Charades-STA,
ActivityNet Captions, the synthetic set) go through `vt_data.converters.convert`; this module only
adds the metric, the category and the facts. The others are read here.

Add a benchmark without editing the harness: write a loader and register it::

    from vt_eval.benchmarks import Benchmark, register_benchmark
    from vt_data.records import VideoQA, format_options

    @register_benchmark("my_bench")
    def load_my_bench(path, *, video_root=None, split="test"):
        rows = json.loads(path.read_text())
        records = [VideoQA(problem=r["q"], path=f"{r['vid']}.mp4", data_source="MyBench",
                           options=format_options(r["choices"]), solution=f"<answer>{r['gold']}</answer>",
                           extra={"original_question_type": r["type"]}) for r in rows if r["split"] == split]
        return Benchmark("my_bench", records, metric="accuracy",
                         category_field="original_question_type", video_root=video_root)

Options reach loaders as keyword arguments; from the command line they arrive as strings, so every
option below accepts its string form ("true", "a,b,c"). Two options work for every benchmark and are
handled here, not by the loaders: `category_field` (group results by another record field) and
`limit` (keep the first N records, for smoke runs; recorded in facts).

Registered benchmarks (metric; category field):

- `video_holmes` (accuracy; original_question_type = SR/IMC/...): test_Video-Holmes.json (or a folder
  of files in its schema) via the vt-data converter; options `annotations_dir`, `path_template`,
  `video_ext`, `data_source`.
- `cg_bench_reasoning` (accuracy; sub_category): CG-Bench JSON list. "Reasoning" is read as the
  sub-categories ending in "Cognition" (`sub_category_suffix`, default "Cognition"; this reading is
  **unverified**, benchmarks.md §2.2); `sub_categories="A,B"` picks exact names, `"all"` keeps all.
  Options from `choices`, gold `right_answer`, `clue_intervals` -> segments (clipped to `duration`).
- `vrbench` (accuracy; original_question_type = reasoning_type, upstream typos kept): VRBench JSONL
  via the converter (MCQ only, as the paper reports).
- `video_r1_json` (accuracy; original_question_type): any Video-R1 / Video-Thinker JSON or JSONL file,
  e.g. the in-domain held-out splits (ActivityNet, STAR, ScaleLong, YouCook2, LVBench tests).
- `vsi_bench` (vsi_bench; original_question_type = question_type): test.jsonl. MCA -> multiple
  choice, NA -> regression (MRA, VSI-Bench variant); overall = macro mean over 8 categories with
  object_rel_direction_{easy,medium,hard} averaged into one first (`vt_eval.metrics.vsi_bench_summary`).
- `videommmu` (accuracy; track): a folder with {perception,comprehension,adaptation}_video.json (or
  one of them); `<image N>` stripped from questions; `open` items -> numerical (VR1's handling).
- `mmvu` (accuracy; subject): validation.json. Multiple choice only by default, as Video-R1 reports
  it; open-ended items are excluded and counted (`facts["excluded_open"]`); `include_open=true` keeps
  them as free-form.
- `mvbench` (accuracy; task): a folder of per-task JSONs (or one); letters in candidate order, gold
  by exact text match with a candidate.
- `tempcompass` (accuracy; dimension): questions/multi-choice.json; options are split out of the
  question text and the gold letter read from the full answer line ("B. quickly").
- `video_mme` (accuracy; task_type): the list-of-videos JSON; the official template's trailing commas
  are tolerated (`facts["json_repaired"]`).
- `synthetic` (accuracy; question_type): vt-data's synthetic test.jsonl; video_root defaults to the
  file's folder.
- `charades_sta`, `activitynet_captions` (grounding; no category): direct temporal grounding, one
  "grounding" record per query, scored by R@1 at IoU 0.3/0.5/0.7 and mIoU.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vt_data.converters import convert
from vt_data.loaders import LoaderRegistry, Loc, as_bool, check_records, fit_span, format_path, mc_record
from vt_data.records import (
    RecordError,
    Segment,
    VideoQA,
    format_options,
    iter_json_lines,
    option_letter,
    option_letters,
    read_json,
    split_option_label,
    strip_option_prefix,
)

# How a benchmark's per-sample scores aggregate (vt_eval.metrics):
#   accuracy  - mean of per-sample scores (MC/numeric in {0, 1}, regression MRA in [0, 1]),
#               overall and per category;
#   vsi_bench - VSI-Bench's macro mean over its 8 categories (direction levels merged first);
#   grounding - direct temporal grounding: R@1 at IoU 0.3/0.5/0.7 and mIoU of the answer span.
METRICS = ("accuracy", "vsi_bench", "grounding")


@dataclass
class Benchmark:
    """A loaded benchmark: records, how to aggregate their scores, and what the loader counted."""

    name: str
    records: list[VideoQA]
    metric: str = "accuracy"
    # Key in `record.extra` (or a record attribute such as "data_source") holding the benchmark's
    # own category; None when the benchmark reports only an overall number.
    category_field: str | None = "original_question_type"
    video_root: Path | None = None
    facts: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"benchmark {self.name!r}: metric must be one of {METRICS}, got {self.metric!r}")
        if self.video_root is not None:
            self.video_root = Path(self.video_root)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[VideoQA]:
        return iter(self.records)

    def category(self, record: VideoQA) -> str | None:
        """The record's category under `category_field` (None without a field or a value)."""
        if not self.category_field:
            return None
        value = record.extra.get(self.category_field)
        if value is None and self.category_field in VideoQA.__dataclass_fields__:
            value = getattr(record, self.category_field)
        return None if value is None or value == "" else str(value)

    @property
    def categories(self) -> list[str]:
        """Every category that occurs, in first-seen order (upstream spellings kept)."""
        seen: dict[str, None] = {}
        for record in self.records:
            if (cat := self.category(record)) is not None:
                seen.setdefault(cat)
        return list(seen)


# name -> `load(annotation_path: Path, *, video_root=None, **options) -> Benchmark`. The harness fills
# `video_root` and handles `category_field` and `limit` itself, for every benchmark (load_benchmark).
BENCHMARKS = LoaderRegistry("benchmark", harness_args=("video_root",),
                            harness_options=("category_field", "limit"))
# `@register_benchmark(name, replace=False)`; a taken name raises unless `replace=True`, so two plugins
# cannot shadow each other by accident.
register_benchmark = BENCHMARKS.register


def list_benchmarks() -> list[str]:
    return sorted(BENCHMARKS)


def load_benchmark(name: str, annotation_path: str | Path, *, video_root: str | Path | None = None,
                   **options: Any) -> Benchmark:
    """Load the benchmark `name` from `annotation_path` (a file, or a folder for multi-file sets).

    Unknown names and options raise ValueError listing the valid ones; a missing path raises
    FileNotFoundError; malformed input raises vt-data's RecordError naming file, line and field.
    `category_field` and `limit` are accepted for every benchmark (module docstring)."""
    loader = BENCHMARKS.loader(name)
    path = Path(annotation_path)
    if not path.exists():
        raise FileNotFoundError(f"{name}: annotation path not found: {path}")
    category_field = options.pop("category_field", _UNSET)
    limit = options.pop("limit", None)
    BENCHMARKS.check_options(name, options)
    bench = loader(path, video_root=video_root, **options)
    if category_field is not _UNSET:
        bench.category_field = category_field or None
    if limit not in (None, ""):
        limit = int(limit)
        bench.facts["limit"] = limit
        bench.records = bench.records[:limit]
    bench.facts.setdefault("benchmark", name)
    bench.facts.setdefault("annotation_path", str(path))
    if options:
        bench.facts.setdefault("options", {k: _jsonable(v) for k, v in options.items()})
    bench.facts["records"] = len(bench.records)
    return bench


_UNSET = object()


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)


# --- small readers and option parsers ----------------------------------------------------------------
def _as_list(value: str | Iterable[str] | None) -> list[str] | None:
    """'a,b' or ['a', 'b'] -> ['a', 'b']; None stays None."""
    if value is None:
        return None
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return [str(v) for v in value]


def _strip_trailing_commas(text: str) -> str:
    """Remove commas that directly precede `]` or `}` outside strings (Video-MME's template has them).

    A string-aware scan, not a regex, so a ", ]" inside a question is never touched."""
    out: list[str] = []
    in_string = escaped = False
    for ch in text:
        if in_string:
            out.append(ch)
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            continue
        if ch == '"':
            in_string = True
        elif ch in "]}":
            j = len(out) - 1
            while j >= 0 and out[j].isspace():
                j -= 1
            if j >= 0 and out[j] == ",":
                del out[j]
        out.append(ch)
    return "".join(out)


def _read_json_repairing(path: Path, facts: dict[str, Any]) -> Any:
    """`read_json`, but a file that fails to parse is parsed again with its trailing commas removed
    (recorded in `facts`); the first error is raised when that fails too."""
    try:
        return read_json(path)
    except RecordError as exc:
        error = exc
    try:
        data = json.loads(_strip_trailing_commas(path.read_text(encoding="utf-8-sig")))
    except json.JSONDecodeError:
        raise error from None
    facts["json_repaired"] = "trailing commas removed"
    return data


def _lettered(options: Sequence[str]) -> list[str]:
    """Options as "A. text" strings: kept when they already carry their letters in order, each with
    text after its label (VSI-Bench, Video-MME), else prefixed (MVBench candidates, VideoMMMU options)."""
    texts = [str(o) for o in options]
    labels = [split_option_label(t) for t in texts]
    if texts and all(label and label[0] == option_letter(i) and label[1] for i, label in enumerate(labels)):
        return [t.strip() for t in texts]
    return format_options(texts)


def _lettered_dict(options: Mapping[str, Any], where: str) -> list[str]:
    """{"A": text, "B": text, ...} -> "A. text" strings; letters must run A, B, ... without gaps, or
    a gold letter would point at the wrong option."""
    letters = sorted(options)
    expected = option_letters(len(letters))
    if letters != expected:
        raise ValueError(f"{where}: option letters must run {''.join(expected)}, got {letters}")
    return format_options(str(options[k]) for k in letters)


def _from_converter(name: str, source: str, path: Path, *, metric: str, category_field: str | None,
                    video_root: str | Path | None, glob: str | None = None, **options: Any) -> Benchmark:
    """Records from vt-data's converter `source`; a folder reads every file matching `glob` in
    sorted order (e.g. Video-Holmes' per-film example question files), counts summed."""
    if path.is_dir():
        files = sorted(path.glob(glob)) if glob else []
        if not files:
            raise FileNotFoundError(f"{name}: no {glob or 'annotation file'} in folder {path}")
    else:
        files = [path]
    records: list[VideoQA] = []
    counts: Counter = Counter()
    for file in files:
        result = convert(source, file, **options)
        records.extend(result.records)
        counts.update(result.counts)
    facts: dict[str, Any] = {"converter": source, **dict(sorted(counts.items()))}
    if len(files) > 1:
        facts["files"] = [f.name for f in files]
    return Benchmark(name, records, metric=metric, category_field=category_field,
                     video_root=video_root, facts=facts)


# --- out-of-domain benchmarks of the paper (benchmarks.md §2) ----------------------------------------
@register_benchmark("video_holmes")
def load_video_holmes(path: Path, *, video_root: str | Path | None = None,
                      annotations_dir: str | Path | None = None, path_template: str = "{video_id}{ext}",
                      video_ext: str = ".mp4", data_source: str = "Video-Holmes") -> Benchmark:
    """test_Video-Holmes.json (§2.1), or a folder of files in its schema (the shipped per-film
    example questions): 6-option MC; categories SR, IMC, TCI, TA, MHR, PAR, CTI."""
    return _from_converter("video_holmes", "video_holmes", path, metric="accuracy",
                           category_field="original_question_type", video_root=video_root, glob="*.json",
                           annotations_dir=annotations_dir, path_template=path_template,
                           video_ext=video_ext, data_source=data_source)


@register_benchmark("vrbench")
def load_vrbench(path: Path, *, video_root: str | Path | None = None, path_template: str | None = None,
                 video_ext: str = ".mp4", data_source: str = "VRBench") -> Benchmark:
    """VRBench JSONL (§2.3): the MCQs (A-D), per `reasoning_type`; step spans become segments."""
    return _from_converter("vrbench", "vrbench", path, metric="accuracy",
                           category_field="original_question_type", video_root=video_root,
                           path_template=path_template, video_ext=video_ext, data_source=data_source)


@register_benchmark("cg_bench_reasoning")
def load_cg_bench_reasoning(path: Path, *, video_root: str | Path | None = None,
                            sub_category_suffix: str | None = "Cognition",
                            sub_categories: str | Sequence[str] | None = None,
                            path_template: str = "{video_uid}{ext}", video_ext: str = ".mp4",
                            data_source: str = "CG-Bench") -> Benchmark:
    """CG-Bench JSON list (§2.2) -> MC records of the "reasoning" subset.

    Subset: `sub_categories` (exact names) if given, else sub_category ending in `sub_category_suffix`
    ("Cognition": the unverified reading of the paper's "reasoning section"); "all" or an empty suffix
    keeps every question. `clue_intervals` ([[s, e], ...] seconds) become segments without captions,
    clipped to `duration`."""
    data = read_json(path)
    if not isinstance(data, list):
        raise RecordError(f"expected a JSON list of questions, got {type(data).__name__}", source=str(path))
    exact = _as_list(sub_categories)
    keep_all = (exact is not None and [e.lower() for e in exact] == ["all"]) or (
        exact is None and (sub_category_suffix is None or sub_category_suffix in ("", "all")))
    counts: Counter = Counter()
    records = []
    for index, item in enumerate(data):
        loc = Loc(path, item=f"[{index}]")
        sub = str(item.get("sub_category") or "") if isinstance(item, dict) else ""
        if not keep_all and not (sub in exact if exact is not None else sub.endswith(sub_category_suffix)):
            counts["excluded_sub_category"] += 1
            continue
        choices = loc.need(item, "choices")
        if not isinstance(choices, list) or len(choices) < 2:
            raise loc.error("needs a list of at least 2 choices", "choices")
        options = format_options(str(c) for c in choices)
        letters = option_letters(len(choices))
        gold = str(loc.need(item, "right_answer")).strip().strip("()")
        if gold not in letters:
            raise loc.error(f"right_answer {gold!r} is not one of {''.join(letters)}", "right_answer")
        # `answer` repeats the gold text; a disagreement means the letter may be wrong, so count it.
        gold_text = str(choices[letters.index(gold)]).strip()
        if item.get("answer") is not None and str(item["answer"]).strip() != gold_text:
            counts["answer_text_disagrees_with_right_answer"] += 1
        try:
            duration = float(item["duration"]) if item.get("duration") not in (None, "") else None
            intervals = [(float(s), float(e)) for s, e in item.get("clue_intervals") or []]
        except (TypeError, ValueError) as exc:
            raise loc.error(f"duration and clue_intervals must be seconds / [[start, end], ...]: {exc}",
                            "clue_intervals") from None
        segments = []
        for interval in intervals:
            span = fit_span(interval, duration, counts, "clue_intervals")
            if span is not None:
                segments.append(Segment(span[0], span[1], ""))
        video_uid = str(loc.need(item, "video_uid"))
        qid = item.get("qid", index)
        counts[f"options_{len(choices)}"] += 1
        records.append(mc_record(
            str(loc.need(item, "question")), options, gold,
            path=format_path(path_template, video_uid=video_uid, ext=video_ext),
            data_source=data_source, problem_id=qid, duration=duration, segments=segments,
            extra={"sub_category": sub, "domain": item.get("domain"), "video_uid": video_uid, "qid": qid}))
    check_records(records, "cg_bench_reasoning", path)
    subset = ("all" if keep_all else f"sub_category in {exact}" if exact is not None
              else f"sub_category ends with {sub_category_suffix!r} (unverified reading of 'reasoning')")
    return Benchmark("cg_bench_reasoning", records, metric="accuracy", category_field="sub_category",
                     video_root=video_root, facts={"subset": subset, **dict(sorted(counts.items()))})


# --- in-domain held-out splits and the synthetic set -------------------------------------------------
@register_benchmark("video_r1_json")
def load_video_r1_json(path: Path, *, video_root: str | Path | None = None, data_source: str | None = None,
                       check: bool | str = True) -> Benchmark:
    """A Video-R1 / Video-Thinker format file (JSON list or JSONL), e.g. an in-domain test split.
    `data_source` fills records that have none (VR1 eval files sometimes leave it empty)."""
    bench = _from_converter("video_r1_json", "video_r1", path, metric="accuracy",
                            category_field="original_question_type", video_root=video_root, check=check)
    if data_source:
        bench.records = [r if r.data_source else r.replace(data_source=data_source) for r in bench.records]
    bench.facts["problem_types"] = dict(Counter(r.problem_type for r in bench.records))
    return bench


@register_benchmark("synthetic")
def load_synthetic(path: Path, *, video_root: str | Path | None = None) -> Benchmark:
    """vt-data's synthetic test.jsonl; its paths ("videos/clip_*.mp4") are relative to its folder."""
    path = path / "test.jsonl" if path.is_dir() else path
    return _from_converter("synthetic", "video_r1", path, metric="accuracy", category_field="question_type",
                           video_root=video_root if video_root is not None else path.parent)


# --- the Video-R1 general suite (benchmarks.md §3) ---------------------------------------------------
VSI_MCA_TYPES = ("object_rel_direction_easy", "object_rel_direction_medium", "object_rel_direction_hard",
                 "object_rel_distance", "route_planning", "obj_appearance_order")
VSI_NA_TYPES = ("object_abs_distance", "object_counting", "object_size_estimation", "room_size_estimation")


@register_benchmark("vsi_bench")
def load_vsi_bench(path: Path, *, video_root: str | Path | None = None,
                   path_template: str = "{dataset}/{scene_name}{ext}", video_ext: str = ".mp4",
                   data_source: str = "VSI-Bench") -> Benchmark:
    """VSI-Bench test.jsonl (§3.1). MCA -> multiple choice (gold letter); NA -> regression (gold number
    string, scored by MRA, VSI-Bench variant). A question type outside the 10 known ones is kept and
    typed by whether it has options (counted as `unknown_question_type`)."""
    counts: Counter = Counter()
    records = []
    for lineno, item in iter_json_lines(path):
        loc = Loc(path, item=f"line {lineno}")
        qtype = str(loc.need(item, "question_type"))
        question = str(loc.need(item, "question"))
        truth = str(loc.need(item, "ground_truth")).strip()
        options = item.get("options") or None
        if qtype not in VSI_MCA_TYPES and qtype not in VSI_NA_TYPES:
            counts["unknown_question_type"] += 1
        common = dict(
            path=format_path(path_template, dataset=item.get("dataset", ""),
                             scene_name=item.get("scene_name", ""), ext=video_ext),
            data_source=data_source, problem_id=item.get("id", lineno),
            extra={"original_question_type": qtype, "dataset": item.get("dataset"),
                   "scene_name": item.get("scene_name")})
        if qtype in VSI_MCA_TYPES or (qtype not in VSI_NA_TYPES and options):
            if not options:
                raise loc.error("an MCA question needs options", "options")
            lettered = _lettered(options)
            letters = option_letters(len(lettered))
            gold = truth.rstrip(".")
            if gold not in letters:
                # Some re-exports store the option text; map it back to its letter.
                texts = [strip_option_prefix(o).strip() for o in lettered]
                if truth in texts:
                    gold = letters[texts.index(truth)]
                    counts["gold_text_mapped_to_letter"] += 1
                else:
                    raise loc.error(f"ground_truth {truth!r} is not an option letter", "ground_truth")
            counts["mca"] += 1
            records.append(mc_record(question, lettered, gold, **common))
        else:
            counts["na"] += 1
            records.append(VideoQA(problem=question.strip(), problem_type="regression", options=None,
                                   solution=f"<answer>{truth}</answer>", **common))
    check_records(records, "vsi_bench", path)
    return Benchmark("vsi_bench", records, metric="vsi_bench", category_field="original_question_type",
                     video_root=video_root, facts={"mra_variant": "vsibench", **dict(sorted(counts.items()))})


VIDEOMMMU_TRACKS = ("perception", "comprehension", "adaptation")
_IMAGE_TAG = re.compile(r"<image\s*\d+>", re.IGNORECASE)


def _videommmu_items(data: Any, track: str) -> Iterator[tuple[str, str, Any]]:
    """(track, key, item) from any of the shapes seen: {Track: {index: item}}, {index: item}, [item]."""
    if isinstance(data, list):
        for i, item in enumerate(data):
            yield track, str(i), item
        return
    if not isinstance(data, dict):
        return
    looks_like_item = lambda v: isinstance(v, dict) and "question" in v  # noqa: E731
    if data and all(looks_like_item(v) for v in data.values()):
        for key, item in data.items():
            yield track, str(key), item
        return
    for name, inner in data.items():
        yield from _videommmu_items(inner, str(name).lower())


@register_benchmark("videommmu")
def load_videommmu(path: Path, *, video_root: str | Path | None = None,
                   tracks: str | Sequence[str] = VIDEOMMMU_TRACKS,
                   path_template: str = "{Track}/{id}{ext}", video_ext: str = ".mp4",
                   data_source: str = "VideoMMMU") -> Benchmark:
    """VideoMMMU (§3.2): a folder with {track}_video.json files, or one such file.

    `<image N>` is stripped from questions (the image is at the end of the video); MC options get
    letters; `open` items become numerical records with the gold answer as written (VR1). The
    category is the track; `discipline` (from ids like "dev_Physics_7") rides along in extra. The
    video layout `{Track}/{id}.mp4` is unverified; set `path_template` (fields id, track, Track, ext)."""
    wanted = [t.lower() for t in _as_list(tracks) or []]
    files = ([path / f"{t}_video.json" for t in wanted] if path.is_dir() else [path])
    counts: Counter = Counter()
    records = []
    for file in files:
        if not file.is_file():
            raise FileNotFoundError(f"videommmu: track file not found: {file}")
        default_track = file.stem.removesuffix("_video").lower()
        for track, key, item in _videommmu_items(read_json(file), default_track):
            if track not in wanted:
                counts["excluded_track"] += 1
                continue
            loc = Loc(file, item=f"{track} {key}")
            qid = str(loc.need(item, "id"))
            question = str(loc.need(item, "question"))
            stripped = _IMAGE_TAG.sub("", question)
            if stripped != question:
                counts["image_tags_stripped"] += 1
                # Collapse the gap the tag leaves ("<image 1> Which" -> "Which"), keep line breaks.
                question = re.sub(r"[ \t]{2,}", " ", stripped).strip()
            answer = str(loc.need(item, "answer")).strip()
            parts = qid.split("_")
            common = dict(path=format_path(path_template, id=qid, track=track, Track=track.capitalize(),
                                           ext=video_ext),
                          data_source=data_source, problem_id=qid,
                          extra={"track": track.capitalize(), "question_type": item.get("question_type"),
                                 "discipline": "_".join(parts[1:-1]) if len(parts) >= 3 else None,
                                 "link_selected": item.get("link_selected")})
            if str(item.get("question_type", "")).lower() in ("open", "open-ended"):
                counts["open_numerical"] += 1
                records.append(VideoQA(problem=question, problem_type="numerical", options=None,
                                       solution=f"<answer>{answer}</answer>", **common))
                continue
            options = item.get("options") or []
            if len(options) < 2:
                counts["skipped_mc_without_options"] += 1
                continue
            counts["multiple_choice"] += 1
            records.append(mc_record(question, _lettered(options), answer, **common))
    check_records(records, "videommmu", path)
    return Benchmark("videommmu", records, metric="accuracy", category_field="track", video_root=video_root,
                     facts=dict(sorted(counts.items())))


def _url_relpath(url: str) -> str:
    """HF dataset URLs ".../resolve/main/videos/Chemistry/1.mp4" -> "videos/Chemistry/1.mp4"."""
    marker = "/resolve/main/"
    if marker in url:
        return url.split(marker, 1)[1]
    return url.rsplit("/", 1)[-1]


@register_benchmark("mmvu")
def load_mmvu(path: Path, *, video_root: str | Path | None = None, include_open: bool | str = False,
              path_template: str = "{video_relpath}", data_source: str = "MMVU") -> Benchmark:
    """MMVU validation.json (§3.3). Multiple-choice only by default (VR1's "MMVU (mc)", 625 of 1,000);
    open-ended items are excluded and counted in `facts["excluded_open"]`, or kept as free-form with
    `include_open=true` (then scored by the declared free-form metric, not a GPT judge). The video path
    is the part of the HF URL after /resolve/main/ (`path_template` fields: video_relpath, video_name, id)."""
    include_open = as_bool(include_open, "include_open")
    data = read_json(path)
    if not isinstance(data, list):
        raise RecordError(f"expected a JSON list of questions, got {type(data).__name__}", source=str(path))
    counts: Counter = Counter()
    records = []
    for index, item in enumerate(data):
        where = f"[{index}]"
        loc = Loc(path, item=where)
        qtype = str(loc.need(item, "question_type"))
        url = str(loc.need(item, "video"))
        metadata = item.get("metadata") or {}
        common = dict(path=format_path(path_template, video_relpath=_url_relpath(url),
                                       video_name=url.rsplit("/", 1)[-1], id=item.get("id", index)),
                      data_source=data_source, problem_id=item.get("id", index),
                      extra={"subject": metadata.get("subject"), "question_type": qtype, "video_url": url})
        question = str(loc.need(item, "question"))
        answer = str(loc.need(item, "answer")).strip()
        if qtype == "multiple-choice":
            try:
                options = _lettered_dict(loc.need(item, "choices"), f"{path}{where}")
            except ValueError as exc:
                raise RecordError(str(exc), field_name="choices") from None
            counts["multiple_choice"] += 1
            records.append(mc_record(question, options, answer, **common))
        elif include_open:
            counts["open_free_form"] += 1
            records.append(VideoQA(problem=question.strip(), problem_type="free-form", options=None,
                                   solution=f"<answer>{answer}</answer>", **common))
        else:
            counts["excluded_open"] += 1
    check_records(records, "mmvu", path)
    # Always state the exclusion, zero included, so a result file says what "MMVU" meant.
    facts = {"excluded_open": counts.pop("excluded_open", 0), "include_open": include_open,
             **dict(sorted(counts.items()))}
    return Benchmark("mmvu", records, metric="accuracy", category_field="subject", video_root=video_root,
                     facts=facts)


@register_benchmark("mvbench")
def load_mvbench(path: Path, *, video_root: str | Path | None = None,
                 tasks: str | Sequence[str] | None = None, video_dirs: Mapping[str, str] | str | None = None,
                 path_template: str = "{task}/{video}", data_source: str = "MVBench") -> Benchmark:
    """MVBench (§3.4): a folder of per-task JSONs ({video, question, candidates, answer}) or one file;
    the task is the file's stem. Letters follow candidate order; the gold letter is the candidate
    whose text equals `answer` (a duplicated candidate takes the first and is counted).

    Video paths: `video_dirs` maps a task to its video folder (MVBench's videos live in the source
    data sets' folders; a dict or a JSON file), else `path_template` (fields task, video)."""
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    wanted = set(_as_list(tasks) or [])
    dirs = video_dirs
    if isinstance(dirs, str):
        dirs = read_json(Path(dirs))
    counts: Counter = Counter()
    records = []
    for file in files:
        task = file.stem
        if wanted and task not in wanted:
            continue
        data = read_json(file)
        if not isinstance(data, list):
            raise RecordError(f"expected a JSON list of questions, got {type(data).__name__}",
                              source=str(file))
        counts[f"task_{task}"] = len(data)
        for index, item in enumerate(data):
            loc = Loc(file, item=f"[{index}]")
            candidates = [str(c) for c in loc.need(item, "candidates")]
            answer = str(loc.need(item, "answer"))
            matches = [i for i, c in enumerate(candidates) if c.strip() == answer.strip()]
            if not matches:
                raise loc.error(f"answer {answer!r} matches no candidate {candidates}", "answer")
            if len(matches) > 1:
                counts["answer_matches_several_candidates"] += 1
            video = str(loc.need(item, "video"))
            video_path = (f"{str(dirs[task]).rstrip('/')}/{video}" if dirs and task in dirs
                          else format_path(path_template, task=task, video=video))
            extra = {"task": task, "video": video}
            for key in ("start", "end", "accurate_start", "accurate_end"):
                if key in item:
                    extra[key] = item[key]
            records.append(mc_record(str(loc.need(item, "question")), format_options(candidates),
                                     option_letter(matches[0]), path=video_path, data_source=data_source,
                                     problem_id=f"{task}_{index}", extra=extra))
    check_records(records, "mvbench", path)
    return Benchmark("mvbench", records, metric="accuracy", category_field="task", video_root=video_root,
                     facts=dict(sorted(counts.items())))


def _inline_label(line: str) -> tuple[str, str] | None:
    """TempCompass letters its options "A. x" or "A) x", never "A: x"; (letter, text)."""
    label = split_option_label(line, separators=".)")
    return (label[0], label[1].rstrip()) if label else None


def _split_inline_options(text: str) -> tuple[str, list[str]] | None:
    """"Stem?\\nA. x\\nB. y" -> ("Stem?", ["x", "y"]): the trailing run of lines lettered A, B, ...;
    None when there is no such run of at least two."""
    lines = text.splitlines()
    options: list[str] = []
    first = len(lines)
    for i in range(len(lines) - 1, -1, -1):
        label = _inline_label(lines[i])
        if not label:
            if lines[i].strip() or options:
                break
            continue
        options.insert(0, label[1])
        first = i
    letters = [_inline_label(line)[0] for line in lines[first:] if line.strip()]
    if len(options) < 2 or letters != option_letters(len(letters)):
        return None
    return "\n".join(lines[:first]).strip(), options


@register_benchmark("tempcompass")
def load_tempcompass(path: Path, *, video_root: str | Path | None = None,
                     path_template: str = "{video_id}{ext}", video_ext: str = ".mp4",
                     data_source: str = "TempCompass") -> Benchmark:
    """TempCompass questions/multi-choice.json (§3.5): video_id -> dimension -> [{question, answer}].
    Options are split out of the question text; the gold letter is the answer line's letter, and
    its text must equal that option's (else RecordError)."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise RecordError(f"expected an object keyed by video id, got {type(data).__name__}",
                          source=str(path))
    counts: Counter = Counter()
    records = []
    for video_id, dimensions in data.items():
        for dimension, items in (dimensions or {}).items():
            for index, item in enumerate(items or []):
                loc = Loc(path, item=f"{video_id} {dimension} [{index}]")
                question = str(loc.need(item, "question"))
                split = _split_inline_options(question)
                if split is None:
                    raise loc.error("no lettered options (A. ..., B. ...) ending the question", "question")
                stem, texts = split
                answer = str(loc.need(item, "answer")).strip()
                # The full answer line ("B. quickly"), or the bare letter ("B", "(B)").
                label = _inline_label(answer)
                letter = label[0] if label else answer.strip("()")
                letters = option_letters(len(texts))
                if letter not in letters or (label and label[1] and label[1] != texts[letters.index(letter)]):
                    raise loc.error(f"answer {answer!r} does not match an option", "answer")
                counts[f"dimension_{dimension}"] += 1
                records.append(mc_record(
                    stem, format_options(texts), letter,
                    path=format_path(path_template, video_id=video_id, ext=video_ext),
                    data_source=data_source, problem_id=f"{video_id}_{dimension}_{index}",
                    extra={"dimension": dimension, "video_id": video_id}))
    check_records(records, "tempcompass", path)
    return Benchmark("tempcompass", records, metric="accuracy", category_field="dimension",
                     video_root=video_root, facts={"task": "multi-choice", **dict(sorted(counts.items()))})


@register_benchmark("video_mme")
def load_video_mme(path: Path, *, video_root: str | Path | None = None,
                   path_template: str = "{video_id}{ext}", video_ext: str = ".mp4",
                   data_source: str = "Video-MME") -> Benchmark:
    """Video-MME (§3.6): [{video_id, duration, domain, sub_category, questions: [...]}], options
    "A. ..." and a gold letter. Trailing commas (the official template) are tolerated and reported;
    questions without an answer are skipped and counted. `path_template` fields: video_id, videoID
    (the YouTube id when the file has one), ext. Never ship this data set (no redistribution)."""
    facts: dict[str, Any] = {}
    data = _read_json_repairing(path, facts)
    if not isinstance(data, list):
        raise RecordError(f"expected a JSON list of videos, got {type(data).__name__}", source=str(path))
    counts: Counter = Counter()
    records = []
    for vi, video in enumerate(data):
        video_id = str(Loc(path, item=f"[{vi}]").need(video, "video_id"))
        video_path = format_path(path_template, video_id=video_id, videoID=video.get("videoID", video_id),
                                 ext=video_ext)
        for qi, item in enumerate(video.get("questions") or []):
            loc = Loc(path, item=f"[{vi}].questions[{qi}]")
            answer = str(item.get("answer") or "").strip()
            if not answer:
                counts["skipped_no_answer"] += 1
                continue
            counts[f"duration_{video.get('duration')}"] += 1
            records.append(mc_record(str(loc.need(item, "question")),
                                     _lettered(loc.need(item, "options")), answer,
                                     path=video_path, data_source=data_source,
                                     problem_id=item.get("question_id", f"{video_id}-{qi}"),
                                     extra={"task_type": item.get("task_type"),
                                            "duration_group": video.get("duration"),
                                            "domain": video.get("domain"),
                                            "sub_category": video.get("sub_category"), "video_id": video_id}))
    check_records(records, "video_mme", path)
    return Benchmark("video_mme", records, metric="accuracy", category_field="task_type",
                     video_root=video_root, facts={**facts, **dict(sorted(counts.items()))})


# --- direct temporal grounding (benchmarks.md §5) ----------------------------------------------------
@register_benchmark("charades_sta")
def load_charades_sta(path: Path, *, video_root: str | Path | None = None,
                      durations: Mapping[str, Any] | str | None = None,
                      path_template: str = "{video_id}{ext}", video_ext: str = ".mp4",
                      data_source: str = "Charades-STA") -> Benchmark:
    """Charades-STA test lines (§5.2) -> grounding records; pass `durations` (the file has none) so
    spans past the end are clipped (counted by the converter)."""
    return _from_converter("charades_sta", "charades_sta", path, metric="grounding", category_field=None,
                           video_root=video_root, durations=durations, path_template=path_template,
                           video_ext=video_ext, data_source=data_source)


@register_benchmark("activitynet_captions")
def load_activitynet_captions(path: Path, *, video_root: str | Path | None = None,
                              path_template: str = "{video_id}{ext}", video_ext: str = ".mp4",
                              data_source: str = "ActivityNet") -> Benchmark:
    """ActivityNet Captions (§5.1; val_2 is the usual test split) -> one grounding record per sentence."""
    return _from_converter("activitynet_captions", "activitynet_captions", path, metric="grounding",
                           category_field=None, video_root=video_root, path_template=path_template,
                           video_ext=video_ext, data_source=data_source)
