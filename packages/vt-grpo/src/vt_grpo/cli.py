"""`vt-grpo`: the GRPO stage as a Hydra app (configs in the repository's conf/ and experiments/).

    vt-sft experiment=tiny_cpu hydra.run.dir=runs/sft_tiny_cpu          # first: the tiny SFT model
    vt-grpo experiment=tiny_cpu_grpo                                    # GRPO from runs/sft_tiny_cpu/hf_model
    vt-grpo experiment=tiny_cpu_grpo init_from=/path/to/hf_model        # from another start policy
    vt-grpo experiment=tiny_cpu_grpo trainer/strategy=ddp trainer.devices=2    # 2 CPU processes (gloo)
    vt-grpo -m experiment=tiny_cpu_grpo module.optimizer.lr=1e-4,3e-4   # a sweep, one directory per job
    vt-grpo -m experiment=video_thinker_7b_grpo hydra/launcher=slurm    # the paper's GRPO, 8 GPUs via SLURM
    python -m vt_grpo.cli ...                                           # the same without the console script

`train(cfg)` does the work and also runs on a config composed with Hydra's compose API (tests,
notebooks), given `paths.run_dir`.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

log = logging.getLogger("vt_grpo")


def train(cfg: Any) -> dict[str, Any]:
    """Composed config -> a GRPO-trained (and exported) policy; returns a summary for sweeps."""
    from vt_model.training.app import isolated_job

    with isolated_job():
        return _train(cfg)


def check_step_alignment(max_steps: int, updates_per_batch: int, every_n_steps: int | None) -> None:
    """Optimizer steps come μ at a time (one rollout batch feeds μ updates): the run length and the
    checkpoint interval must be multiples of μ, or a checkpoint would fall inside a rollout batch
    (whose rollouts are not saved) and resume could not be exact."""
    if max_steps % updates_per_batch:
        raise ValueError(
            f"trainer.max_steps={max_steps} is not a multiple of updates_per_batch={updates_per_batch}"
        )
    if every_n_steps and every_n_steps % updates_per_batch:
        raise ValueError(
            f"callbacks.checkpoint.every_n_steps={every_n_steps} is not a multiple of "
            f"updates_per_batch={updates_per_batch}"
        )


def _train(cfg: Any) -> dict[str, Any]:
    from hydra.utils import instantiate
    from lightning.pytorch import seed_everything

    from vt_model.training.app import (
        instantiate_group,
        pin_relaunch_command,
        print_and_save_config,
        run_prepare,
    )
    from vt_model.training.checkpointing import AtomicCheckpoint, checkpoints_last
    from vt_model.training.export import export_hf
    from vt_model.training.resilience import fit

    run_dir = Path(cfg.paths.run_dir)
    print_and_save_config(cfg, run_dir)
    seed_everything(cfg.seed, workers=True)
    run_prepare([cfg.model.get("prepare"), cfg.data.get("prepare")])
    if not Path(str(cfg.init_from)).is_dir():
        raise FileNotFoundError(
            f"init_from={cfg.init_from} is not a model directory (train the SFT stage first: "
            "vt-sft experiment=... writes <run dir>/hf_model)"
        )

    datamodule = instantiate(cfg.datamodule)
    module = instantiate(cfg.module)
    settings = module.settings
    max_steps = int(cfg.trainer.max_steps)
    if max_steps <= 0:
        raise ValueError("GRPO runs a fixed number of steps: set trainer.max_steps")
    # The step's log line is written before its checkpoint, so a kill in between loses no logged step.
    callbacks = checkpoints_last(instantiate_group(cfg.get("callbacks")))
    loggers = instantiate_group(cfg.get("logger"))
    checkpoints = [c for c in callbacks if isinstance(c, AtomicCheckpoint)]
    check_step_alignment(
        max_steps, settings.updates_per_batch, checkpoints[0].every_n_steps if checkpoints else None
    )
    trainer = instantiate(cfg.trainer, max_steps=max_steps, callbacks=callbacks, logger=loggers or False)
    if trainer.world_size != settings.world_size:
        raise ValueError(
            f"the trainer has {trainer.world_size} processes (devices × nodes) but "
            f"grpo.world_size is {settings.world_size}"
        )

    ckpt_path = checkpoints[0].resolve(cfg.resume) if checkpoints else None
    if cfg.resume not in (None, "auto") and not checkpoints:
        raise ValueError("resume needs the checkpoint callback (callbacks.checkpoint)")
    pin_relaunch_command()
    with warnings.catch_warnings():
        # The ticket stream is endless and sized by max_steps; Lightning's heuristics about it do not apply.
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*IterableDataset.*__len__.*")
        # Preemption signals -> a checkpoint and exit 75; a lost rank -> RankLostError (resilience).
        fit(trainer, module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)

    exported = None
    if cfg.get("export", True):
        exported = export_hf(
            trainer, module.model, module.tokenizer, run_dir / "hf_model", source_dir=cfg.init_from
        )
    summary = {
        "run_dir": str(run_dir),
        "global_step": trainer.global_step,
        "reward": _last_metric(run_dir, "reward_mean"),
        "export": str(exported) if exported else None,
        "resumed_from": str(checkpoints[0].resume_from)
        if checkpoints and checkpoints[0].resume_from
        else None,
    }
    log.info("done: %s", summary)
    return summary


def _last_metric(run_dir: Path, name: str) -> float | None:
    import json

    path = run_dir / "logs" / "grpo.jsonl"
    if not path.is_file():
        return None
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return json.loads(lines[-1]).get(name) if lines else None


def _hydra_task(cfg: Any) -> dict[str, Any]:
    return train(cfg)


def main() -> None:
    """Console entry point (`vt-grpo`)."""
    import hydra

    from vt_model.training.app import config_dir, register_resolvers

    register_resolvers()
    hydra.main(config_path=config_dir(), config_name="grpo", version_base="1.3")(_hydra_task)()


if __name__ == "__main__":
    main()
