"""`vt-eval`: evaluation as a Hydra app (conf/eval.yaml), plus two plain subcommands.

    vt-eval benchmark=synthetic protocol=tiny_cpu                       # tiny model, synthetic test set, CPU
    vt-eval model=qwen25vl_7b model.path=DIR benchmark=video_holmes data_root=DIR run_name=qwen25vl_7b
    vt-eval -m benchmark=video_holmes,cg_bench_reasoning,vrbench model.path=DIR run_name=NAME
    vt-eval -m benchmark=video_holmes hydra/launcher=slurm trainer.devices=8   # one process per GPU
    vt-eval report RUN_DIRS... [--out DIR]                              # table + plots (vt_eval.report)
    vt-eval merge RUN_DIR                                               # merge rank files by hand
    python -m vt_eval.cli ...                                           # the same without the console script

Faithfulness (vt_eval.faithfulness, vt_eval.reliance) runs with every evaluation by default: the clue
checker of the `clue_checker` group (default `auto`: rule-based on the synthetic set, none elsewhere;
`clue_checker=qwen25vl_7b` / `vt_model` / `openai`; `~clue_checker`: off) and the reliance pass over
`faithfulness.reliance` (`enabled`, a fixed subset by `every` and `limit`, `batch_size`).

`report` and `merge` are dispatched on argv[1] before Hydra sees the command line. `run(cfg)` does the
evaluation and also runs on a config composed with Hydra's compose API (tests, notebooks), given
`paths.run_dir`. The same command twice resumes: the run directory is fixed by run_name, protocol and
benchmark (conf/eval.yaml), and vt_eval.runner skips what its predictions files already hold.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("vt_eval")


def _save_config(cfg: Any, run_dir: Path, rank: int) -> None:
    """Print the resolved config and save it (and the unresolved composition) into the run directory
    (style.md H7), from rank 0 only."""
    from omegaconf import OmegaConf

    from vt_data.files import write_text_atomic

    if rank != 0:
        return
    text = OmegaConf.to_yaml(cfg, resolve=True)
    print(text, flush=True)
    write_text_atomic(run_dir / "config.yaml", text)
    write_text_atomic(run_dir / "config.composed.yaml", OmegaConf.to_yaml(cfg, resolve=False))


def _prepare(cfg: Any) -> None:
    """Build the tiny model / synthetic set when the config points at one that does not exist yet.

    A `prepare:` node only runs when its asset is missing: an existing model directory (a real
    checkpoint, given with model.path=...) is never handed to the tiny-model builder."""
    from hydra.utils import instantiate

    if not (Path(cfg.model.path) / "config.json").is_file():
        if cfg.model.get("prepare") is None:
            raise FileNotFoundError(f"model.path={cfg.model.path} is not a model directory (no config.json)")
        instantiate(cfg.model.prepare)
    if not Path(cfg.benchmark.annotation_path).exists() and cfg.benchmark.get("prepare") is not None:
        instantiate(cfg.benchmark.prepare)


def _container(node: Any) -> dict[str, Any]:
    """A config mapping (or None) as a plain dict, interpolations resolved."""
    from omegaconf import DictConfig, OmegaConf

    if node is None:
        return {}
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)


def build_benchmark(bench_cfg: Any):
    """The `Benchmark` a conf/benchmark/*.yaml node describes, named after the node (so e.g. the
    vt10k_star split keeps its name although its loader is video_r1_json)."""
    from vt_eval.benchmarks import load_benchmark

    options = _container(bench_cfg.get("options"))
    bench = load_benchmark(
        bench_cfg.loader, bench_cfg.annotation_path, video_root=bench_cfg.get("video_root"), **options
    )
    bench.facts.setdefault("loader", bench_cfg.loader)
    bench.name = bench_cfg.name
    return bench


def build_protocol(protocol_cfg: Any):
    from hydra.utils import instantiate

    return instantiate(protocol_cfg)


def build_faithfulness(cfg: Any, device: str) -> dict[str, Any]:
    """The `clue_checker` and `reliance` arguments of `evaluate` from the config: the checker of the
    `clue_checker` group (None when absent or when `auto` finds none; a checker on device "auto" or
    "cuda" is placed on this rank's device) and `faithfulness.reliance` (None unless enabled)."""
    from hydra.utils import instantiate

    from vt_data.clues import build_checker
    from vt_eval.reliance import RelianceOptions

    node = cfg.get("clue_checker")
    checker = build_checker(instantiate(node)) if node is not None and "_target_" in node else None
    if checker is not None and getattr(checker, "device", None) in ("auto", "cuda"):
        checker.device = device  # one checker per rank, on that rank's GPU
    options = _container((cfg.get("faithfulness") or {}).get("reliance"))
    reliance = None
    if options.pop("enabled", False):
        reliance = RelianceOptions(**options)
    return {"clue_checker": checker, "reliance": reliance}


def run(cfg: Any) -> dict[str, Any]:
    """A composed eval config -> an evaluation in `paths.run_dir`; returns a short summary for sweeps."""
    from vt_eval.plan import resolve_rank
    from vt_eval.runner import evaluate
    from vt_model.engines import resolve_device

    run_dir = Path(cfg.paths.run_dir)
    rank, world_size = resolve_rank(cfg.eval.rank, cfg.eval.world_size)
    _save_config(cfg, run_dir, rank)
    _prepare(cfg)  # race-safe builders: every rank may call them
    bench = build_benchmark(cfg.benchmark)
    protocol = build_protocol(cfg.protocol)
    results = evaluate(
        cfg.model.path,
        bench,
        protocol,
        run_dir,
        batch_size=cfg.eval.batch_size,
        limit=cfg.eval.limit,
        backend=cfg.eval.backend,
        device=cfg.eval.device,
        rank=rank,
        world_size=world_size,
        dtype=cfg.eval.dtype,
        attn_implementation=cfg.eval.attn_implementation,
        num_workers=cfg.eval.num_workers,
        label=cfg.run_name,
        paper_model=cfg.get("paper_model"),
        weights_cache=cfg.eval.get("weights_cache"),
        engine_options=_container(cfg.eval.get("engine_options")),
        **build_faithfulness(cfg, resolve_device(cfg.eval.device, rank, world_size)),
    )
    summary = {
        "run_dir": str(run_dir),
        "benchmark": bench.name,
        "protocol": protocol.name,
        "accuracy": results.get("primary_accuracy"),
        "complete": results["complete"],
        "counts": results["counts"],
    }
    log.info("done: %s", summary)
    return summary


def _hydra_task(cfg: Any) -> dict[str, Any]:
    return run(cfg)


def merge_main(argv: Sequence[str]) -> int:
    """`vt-eval merge RUN_DIR...`: combine rank files and write results.json (vt_eval.merge.merge)."""
    import argparse
    import json

    from vt_eval.merge import merge

    parser = argparse.ArgumentParser(prog="vt-eval merge", description=merge_main.__doc__)
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR")
    args = parser.parse_args(argv)
    status = 0
    for directory in args.runs:
        results = merge(directory)
        print(
            json.dumps(
                {
                    "run_dir": directory,
                    "complete": results["complete"],
                    "counts": results["counts"],
                    "accuracy": results.get("primary_accuracy"),
                }
            )
        )
        status |= 0 if results["complete"] else 1
    return status


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point (`vt-eval`)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["report"]:
        from vt_eval.report import main as report_main

        sys.exit(report_main(args[1:]))
    if args[:1] == ["merge"]:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        sys.exit(merge_main(args[1:]))
    import hydra

    from vt_model.training.app import config_dir, register_resolvers

    sys.argv = [sys.argv[0], *args]  # hydra.main reads sys.argv
    register_resolvers()
    hydra.main(config_path=config_dir(), config_name="eval", version_base="1.3")(_hydra_task)()


if __name__ == "__main__":
    main()
