"""`vt-curate`: build Video-Thinker-10K (method.md §5) as a Hydra app over conf/curate/ (curate.yaml).

    vt-curate                                              # synthetic data, rule-based teacher and checker
    vt-curate name=vt10k sources=[activitynet_captions,youcook2,star,lvbench] teacher=vllm \\
        checker=vllm_qwen25vl_7b stages.balance.target_size=10000
    vt-curate name=vt10k ... dry_run=true                  # print the first uncached requests, send nothing
    python -m vt_data.curate.cli ...                       # the same without the console script

Rerunning a command resumes from its cache (`cache_dir`): finished calls are not sent again.
`curate(cfg)` does the work and also runs on a config composed with Hydra's compose API (tests,
notebooks). The config tree is found from VT_ROOT, else by walking up from the working directory,
else from this file (an editable install inside the repository).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("vt_data.curate")

CONFIG_SUBDIR = Path("conf") / "curate"
CONFIG_NAME = "curate"


def config_dir() -> str:
    """Absolute conf/curate directory; also exports VT_ROOT, which the configs' paths use."""
    env = os.environ.get("VT_ROOT")
    bases = [Path(env).expanduser().resolve()] if env else [Path.cwd(), Path(__file__).resolve()]
    for base in bases:
        for candidate in (base, *base.parents):
            if (candidate / CONFIG_SUBDIR / f"{CONFIG_NAME}.yaml").is_file():
                os.environ["VT_ROOT"] = str(candidate)
                return str(candidate / CONFIG_SUBDIR)
    raise FileNotFoundError(f"cannot find {CONFIG_SUBDIR}/{CONFIG_NAME}.yaml; run from the repository "
                            "or set VT_ROOT")


def build(cfg: Any) -> tuple[dict[str, Any], Any]:
    """(stages by name in run order, run context) instantiated from a composed config."""
    from hydra.utils import instantiate

    from vt_data.curate.pipeline import Context

    engine = instantiate(cfg.engine)
    stages = {name: instantiate(node) for name, node in cfg.stages.items() if node is not None}
    ctx = Context(out_dir=Path(cfg.out_dir), engine=engine,
                  video_root=Path(cfg.video_root) if cfg.get("video_root") else None,
                  seed=int(cfg.seed), progress=bool(cfg.progress))
    return stages, ctx


def curate(cfg: Any) -> dict[str, Any]:
    """Run the pipeline of a composed config; returns the report (also written to out_dir)."""
    from omegaconf import OmegaConf

    from vt_data.curate.pipeline import run_pipeline

    stages, ctx = build(cfg)
    if not ctx.dry_run:
        ctx.out_dir.mkdir(parents=True, exist_ok=True)
        (ctx.out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True), encoding="utf-8")
    run = run_pipeline(stages, ctx)
    summary = {"out_dir": str(ctx.out_dir), "dry_run": ctx.dry_run, "final": run.report["final"],
               "dropped": {name: s["dropped"] for name, s in run.report["stages"].items() if s["dropped"]},
               "calls": run.report["calls"]["total"]}
    print(json.dumps(summary, indent=1, ensure_ascii=False))
    return run.report


def _task(cfg: Any) -> None:
    from vt_data.curate.models import FatalChatError
    from vt_data.records import RecordError

    try:
        curate(cfg)
    except (FatalChatError, RecordError, FileNotFoundError, ValueError) as exc:
        # A bad key, URL, annotation file or setting: every later item would fail the same way.
        # Finished calls are cached, so fix it and rerun the same command.
        log.error("stopped: %s", exc)
        print(f"vt-curate: stopped: {exc}", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    """Console entry point (`vt-curate`); `argv` (overrides) replaces sys.argv[1:] when given, so
    `vt-data curate ...` can forward to it."""
    import hydra

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    hydra.main(config_path=config_dir(), config_name=CONFIG_NAME, version_base="1.3")(_task)()


if __name__ == "__main__":
    main()
