"""`vt-sft`: the SFT stage as a Hydra app (configs in the repository's conf/ and experiments/).

    vt-sft experiment=tiny_cpu                                   # tiny model, synthetic shards, 1 CPU process
    vt-sft experiment=tiny_cpu trainer/strategy=ddp trainer.devices=2     # 2 CPU processes (gloo)
    vt-sft experiment=tiny_cpu trainer/strategy=deepspeed_z2_cpu trainer.devices=2
    vt-sft -m experiment=tiny_cpu module.optimizer.lr=1e-3,3e-4  # a sweep, one directory per job
    vt-sft experiment=video_thinker_7b_sft hydra/launcher=slurm -m   # the paper's SFT, 8 GPUs via SLURM
    python -m vt_sft.cli ...                                     # the same without the console script

`train(cfg)` does the work and also runs on a config composed with Hydra's compose API (tests,
notebooks), given `paths.run_dir`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("vt_sft")


def train(cfg: Any) -> dict[str, Any]:
    """Compose-time config -> a trained (and exported) model; returns a summary for sweeps."""
    from vt_model.training.app import isolated_job

    with isolated_job():
        return _train(cfg)


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

    datamodule = instantiate(cfg.datamodule)
    max_steps = int(cfg.trainer.max_steps)
    if max_steps <= 0:
        max_steps = datamodule.max_steps(cfg.epochs)
        log.info("%s epoch(s) of %d samples per rank at %s -> max_steps=%d", cfg.epochs,
                 datamodule.samples_per_rank(), datamodule.batch, max_steps)
    module = instantiate(cfg.module)
    callbacks = checkpoints_last(instantiate_group(cfg.get("callbacks")))
    loggers = instantiate_group(cfg.get("logger"))
    trainer = instantiate(cfg.trainer, max_steps=max_steps, callbacks=callbacks, logger=loggers or False)
    if trainer.world_size != datamodule.batch.world_size:
        raise ValueError(f"the trainer has {trainer.world_size} processes (devices × nodes) but "
                         f"batch.world_size is {datamodule.batch.world_size}")

    checkpoints = [c for c in callbacks if isinstance(c, AtomicCheckpoint)]
    ckpt_path = checkpoints[0].resolve(cfg.resume) if checkpoints else None
    if cfg.resume not in (None, "auto") and not checkpoints:
        raise ValueError("resume needs the checkpoint callback (callbacks.checkpoint)")
    pin_relaunch_command()
    # weights_only: Lightning's checkpoint holds tensors, numbers and strings only (DeepSpeed's engine
    # ignores this and loads its own files with weights_only=False).
    # Preemption signals -> a checkpoint and exit 75; a lost rank -> RankLostError (resilience).
    fit(trainer, module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)

    exported = None
    if cfg.get("export", True):
        exported = export_hf(trainer, module.model, datamodule.tokenizer, run_dir / "hf_model",
                             source_dir=cfg.model.path)
    resumed_from = checkpoints[0].resume_from if checkpoints else None
    summary = {"run_dir": str(run_dir), "global_step": trainer.global_step,
               "loss": _last_loss(run_dir), "export": str(exported) if exported else None,
               "resumed_from": str(resumed_from) if resumed_from else None}
    log.info("done: %s", summary)
    return summary


def _last_loss(run_dir: Path) -> float | None:
    import json

    path = run_dir / "logs" / "steps.jsonl"
    if not path.is_file():
        return None
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return json.loads(lines[-1])["loss"] if lines else None


def main() -> None:
    """Console entry point (`vt-sft`)."""
    import hydra

    from vt_model.training.app import config_dir, register_resolvers

    register_resolvers()
    hydra.main(config_path=config_dir(), config_name="sft", version_base="1.3")(train)()


if __name__ == "__main__":
    main()
