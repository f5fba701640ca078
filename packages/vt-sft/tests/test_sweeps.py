"""`vt-sft -m`: a sweep over two learning rates runs two jobs, each in its own directory, also when each
job is a 2-process DDP run (Lightning relaunches a rank per job; style.md A3); the same sweep through
submitit's local executor; and the SLURM launcher config renders the sbatch submission we intend."""

from __future__ import annotations

import pickle

import pytest

SWEEP = ["trainer.max_steps=2", "batch.micro_batch_per_device=1", "export=false",
         "module.optimizer.lr=1e-3,1e-4"]


def _job_dirs(sweep_dir):
    return sorted(p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit())


@pytest.mark.slow
@pytest.mark.distributed
def test_multirun_over_two_learning_rates_with_ddp_jobs(sft, tmp_path):
    sweep, logs = tmp_path / "sweep", tmp_path / "logs"
    sft.run_cli(["-m", *sft.overrides, *SWEEP, "trainer/strategy=ddp", "trainer.devices=2",
                 f"hydra.sweep.dir={sweep}", f"paths.log_dir={logs}"])
    jobs = _job_dirs(sweep)
    assert [j.name for j in jobs] == ["0", "1"]
    for job, lr in zip(jobs, ("0.001", "0.0001"), strict=True):
        assert f"lr: {lr}" in (job / "config.yaml").read_text()
        assert len(sft.read_jsonl(job / "logs" / "steps.jsonl")) == 2
        # Rank 1 ran this job (not a sweep of its own) in this job's directory.
        assert len(sft.read_jsonl(job / "logs" / "samples-rank1.jsonl")) == 2
    assert not logs.exists()  # no rank wrote a stray run directory elsewhere


@pytest.mark.slow
def test_multirun_through_submitit_local(sft, tmp_path):
    sweep = tmp_path / "sweep"
    sft.run_cli(["-m", "hydra/launcher=submitit_local", *sft.overrides, *SWEEP, f"hydra.sweep.dir={sweep}"])
    jobs = _job_dirs(sweep)
    assert len(jobs) == 2
    results = sorted((sweep / ".submitit").rglob("*_result.pkl"))
    assert len(results) == 2
    for path in results:
        status, summary = pickle.loads(path.read_bytes())
        assert status == "success" and summary.return_value["global_step"] == 2


def test_slurm_launcher_renders_one_task_per_gpu_with_requeue(monkeypatch, tmp_path):
    import submitit
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from submitit.slurm.slurm import SlurmExecutor

    from vt_model.training.app import config_dir, register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("sft", overrides=["experiment=video_thinker_7b_sft", "hydra/launcher=slurm",
                                        f"hydra.sweep.dir={tmp_path}", "hydra.job.name=vt-sft"],
                      return_hydra_config=True)
    rendered = {}

    def fake_map_array(self, fn, *args):
        # What the plugin would submit: the sbatch file of its executor, built from our config.
        rendered["executor"] = self._executor
        command = "python -u -m submitit.core._submit"
        rendered["sbatch"] = self._executor._make_submission_file_text(command, "uid")
        return []

    monkeypatch.setattr(SlurmExecutor, "affinity", classmethod(lambda cls: 2))  # no srun here
    monkeypatch.setattr(submitit.AutoExecutor, "map_array", fake_map_array)
    launcher = instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=lambda c: None, config=cfg)
    launcher.launch([["seed=0"]], initial_job_idx=0)

    lines = rendered["sbatch"].splitlines()
    for expected in ("#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8",
                     "#SBATCH --cpus-per-task=8", "#SBATCH --time=1440", "#SBATCH --signal=USR2@120",
                     "#SBATCH --job-name=vt-sft"):
        assert expected in lines, (expected, rendered["sbatch"])
    assert any(line.startswith("srun ") for line in lines)
    # Requeued on timeout / preemption up to 3 times: safe because resume=auto is proven (test_resume).
    assert rendered["executor"].max_num_timeout == 3 and cfg.resume == "auto"
