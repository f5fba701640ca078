"""The `vt-data` command: synth, convert, validate, shard, probe, stats and curate (thin wrappers; the
work lives in the library modules, imported lazily so `vt-data --help` stays instant)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False, default=str))


def cmd_synth(args: argparse.Namespace) -> int:
    from vt_data.synthetic import SynthConfig, build_dataset

    overrides = {}
    if args.num_segments is not None:
        counts = tuple(int(n) for n in args.num_segments.split(","))
        overrides["num_segments"] = counts[0] if len(counts) == 1 else counts
    for name in ("num_train_clips", "num_test_clips", "num_colours", "seconds_per_segment",
                 "traced_fraction", "seed"):
        value = getattr(args, name)
        if value is not None:
            overrides[name] = value
    for name in ("question_types", "traced_types"):
        value = getattr(args, name)
        if value is not None:
            overrides[name] = tuple(t.strip() for t in value.split(",") if t.strip())
    if args.shuffle_options:
        overrides["shuffle_options"] = True
    summary = build_dataset(Path(args.out), SynthConfig(**overrides), progress=not args.quiet)
    _print_json(summary)
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from vt_data.converters import CONVERTERS, convert
    from vt_data.records import write_records

    if args.source not in CONVERTERS:
        print(f"unknown source {args.source!r}; known: {', '.join(sorted(CONVERTERS))}", file=sys.stderr)
        return 2
    options = dict(item.split("=", 1) for item in args.option)
    result = convert(args.source, args.file, **options)
    count = write_records(result.records, args.out)
    _print_json({"written": count, "out": str(args.out), "counts": dict(result.counts)})
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Exit 1 with one line per problem (file:line: field: message), 0 when every record is sound."""
    from vt_data.records import RecordError, iter_records, validate

    bad = total = 0
    for file in args.files:
        try:
            for line, record in iter_records(file):
                total += 1
                problems = validate(record, video_root=args.video_root)
                for problem in problems:
                    print(f"{file}:{line}: {problem}")
                bad += bool(problems)
        except RecordError as exc:
            # A record that does not even parse stops that file; the error names file and line.
            print(str(exc))
            bad += 1
    print(f"{total} records checked, {bad} with problems", file=sys.stderr)
    return 1 if bad else 0


def cmd_shard(args: argparse.Namespace) -> int:
    from vt_data.records import load_records
    from vt_data.shards.writer import write_shards

    records = [r for f in args.files for r in load_records(f)]
    # The method's data regime: SFT on the traced part, GRPO on the answer-only part (method.md §5, §7).
    if args.select != "all":
        records = [r for r in records if bool(r.process.strip()) == (args.select == "traced")]
        if not records:
            print(f"no {args.select} records in {', '.join(args.files)}", file=sys.stderr)
            return 1
    summary = write_shards(records, args.video_root, args.out, max_count=args.max_count,
                           progress=not args.quiet)
    _print_json(summary)
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    from vt_data.video import VideoDecodeError, probe_video

    try:
        _print_json(probe_video(args.video, backend=args.backend))
    except VideoDecodeError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from vt_data.stats import summarize_paths

    _print_json(summarize_paths(args.paths))
    return 0


def cmd_curate(args: argparse.Namespace) -> int:
    from vt_data.curate.cli import main as curate_main

    return curate_main(args.overrides) or 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vt-data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="build the embedded synthetic video-reasoning dataset")
    p.add_argument("--out", required=True, help="output directory (videos/, train.jsonl, test.jsonl)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--num-train-clips", type=int, default=None)
    p.add_argument("--num-test-clips", type=int, default=None)
    p.add_argument("--num-colours", type=int, default=None)
    p.add_argument("--num-segments", default=None, metavar="N[,M...]",
                   help="segments per clip (default: num-colours); a list draws each clip's count from it")
    p.add_argument("--seconds-per-segment", type=float, default=None)
    p.add_argument("--traced-fraction", type=float, default=None)
    p.add_argument("--question-types", default=None, metavar="A,B",
                   help="comma-separated question types (default: all five)")
    p.add_argument("--traced-types", default=None, metavar="A,B",
                   help="question types whose train samples may carry a full trace; the rest are "
                        "answer-only (the method's data regime: traces for a part, answers for the rest)")
    p.add_argument("--shuffle-options", action="store_true", help="harder: shuffle options per question")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("convert", help="convert a source's annotation file to records (JSONL)")
    p.add_argument("source", help="source name, e.g. activitynet_captions, charades_sta, video_holmes")
    p.add_argument("file")
    p.add_argument("--out", required=True, help="output .jsonl or .json")
    p.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE",
                   help="converter option, e.g. -o durations=durations.json")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("validate", help="check records; exit 1 with a per-line report on problems")
    p.add_argument("files", nargs="+")
    p.add_argument("--video-root", default=None, help="also check that each video file exists")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("shard", help="write WebDataset shards holding each sample's video and record")
    p.add_argument("files", nargs="+", help="record files (.jsonl / .json)")
    p.add_argument("--video-root", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--max-count", type=int, default=256, help="samples per shard")
    p.add_argument("--select", choices=("all", "traced", "answer-only"), default="all",
                   help="only records with a trace (SFT data) or only those without (GRPO prompts)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_shard)

    p = sub.add_parser("probe", help="JSON facts about one video")
    p.add_argument("video")
    p.add_argument("--backend", default="pyav", choices=("pyav", "decord"))
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("curate", add_help=False,
                       help="build Video-Thinker-10K-style data (Hydra overrides follow; same as vt-curate)")
    p.add_argument("overrides", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_curate)

    p = sub.add_parser("stats", help="counts per source, type, answer and trace for records or shards")
    p.add_argument("paths", nargs="+", help="record files or shard directories")
    p.set_defaults(func=cmd_stats)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from vt_data.records import RecordError

    try:
        return args.func(args)
    except (RecordError, ValueError, FileNotFoundError) as exc:
        # Bad input is the user's to fix: one clear line naming the file, no traceback.
        print(f"vt-data {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
