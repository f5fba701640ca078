"""The `vt-eval` app: every benchmark × protocol composes and its protocol validates with no weights
(style.md H6), the YAML presets equal `vt_eval.protocol.PRESETS`, the run directory resumes by
construction, the SLURM launcher composes with one task per GPU, an evaluation runs from a composed
config, and `vt-eval report` / `vt-eval merge` run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vt_eval.protocol import PRESETS, Protocol

ROOT = Path(__file__).resolve().parents[3]
BENCHMARKS = sorted(p.stem for p in (ROOT / "conf" / "benchmark").glob("*.yaml"))
PROTOCOLS = sorted(p.stem for p in (ROOT / "conf" / "protocol").glob("*.yaml"))


def compose(overrides: list[str], *, hydra: bool = False):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from vt_model.training.app import config_dir, register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return hydra_compose("eval", overrides=overrides, return_hydra_config=hydra)


def test_every_config_file_opens_with_its_launch_command():
    for path in [
        ROOT / "conf" / "eval.yaml",
        *(ROOT / "conf" / "benchmark").glob("*.yaml"),
        *(ROOT / "conf" / "protocol").glob("*.yaml"),
    ]:
        assert path.read_text().startswith("# vt-eval "), path


def test_every_benchmark_and_protocol_compose_and_validate():
    """Each benchmark with the default protocol, each protocol with the default benchmark (one Hydra
    initialisation: composing is cheap, initialising is not)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from vt_eval.benchmarks import BENCHMARKS as LOADERS
    from vt_model.training.app import config_dir, register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        for benchmark in BENCHMARKS:
            cfg = hydra_compose(
                "eval", overrides=[f"benchmark={benchmark}", "data_root=/data", "paths.run_dir=/x"]
            )
            assert cfg.benchmark.name == benchmark and cfg.benchmark.loader in LOADERS
            OmegaConf.to_container(cfg.benchmark, resolve=True)  # every interpolation resolves
        for protocol in PROTOCOLS:
            cfg = hydra_compose("eval", overrides=[f"protocol={protocol}", "paths.run_dir=/x"])
            built = instantiate(cfg.protocol)
            assert isinstance(built, Protocol) and built == PRESETS[protocol]  # YAML == the code's presets
    assert set(PROTOCOLS) == set(PRESETS)


def test_the_run_directory_is_fixed_by_model_protocol_and_benchmark():
    cfg = compose(
        ["benchmark=video_holmes", "protocol=video_r1", "run_name=m", "paths.log_dir=/logs"], hydra=True
    )
    assert cfg.hydra.run.dir == "/logs/eval/m/video_r1/video_holmes"
    assert f"{cfg.hydra.sweep.dir}/{cfg.hydra.sweep.subdir}" == "/logs/eval/m/video_r1/video_holmes"
    assert cfg.benchmark.annotation_path == f"{cfg.paths.data_dir}/Video-Holmes/test_Video-Holmes.json"
    assert compose(["model=qwen25vl_7b"]).eval.dtype == "bfloat16"


def test_each_family_gets_the_papers_video_tokens_from_its_protocol():
    """The paper's protocol with a Qwen2.5-VL model and `video_thinker_qwen3vl` with a Qwen3-VL one
    (experiments/video_thinker_qwen3vl_8b/README.md) give a 16-frame 16:9 clip the same 960 video
    tokens; the Qwen2.5-VL numbers read as Qwen3-VL's whole-clip budget would give it 24 (32x96 frames)."""
    from hydra.utils import instantiate

    from vt_model.families import get_family

    def tokens(overrides: list[str]) -> int:
        cfg = compose(overrides)
        video = instantiate(cfg.protocol).video_config(get_family(cfg.model.family).video_config())
        t, h, w = video.grid_thw(16, 720, 1280)
        return t * h * w // video.merge_size**2

    assert tokens(["model=qwen25vl_7b"]) == 960
    assert tokens(["model=qwen3vl_8b", "protocol=video_thinker_qwen3vl"]) == 960
    assert tokens(["model=qwen3vl_8b"]) == 24  # why Qwen3-VL needs its own protocol


def test_the_slurm_launcher_runs_one_task_per_gpu():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = compose(["hydra/launcher=slurm", "trainer.devices=8"], hydra=True)
    assert cfg.hydra.launcher.tasks_per_node == 8 and cfg.hydra.launcher.gpus_per_node == 8


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Path:
    from vt_data.synthetic import build_tiny_dataset
    from vt_model.tiny import write_tiny_model

    root = tmp_path_factory.mktemp("cli-assets")
    write_tiny_model(root / "model", seed=0)
    build_tiny_dataset(root / "data", num_train_clips=0, num_test_clips=3, seed=0)
    return root


def test_an_evaluation_runs_from_the_composed_config_and_report_and_merge_run(assets, tmp_path, capsys):
    from vt_eval.cli import main, run

    run_dir = tmp_path / "eval" / "tiny" / "tiny_cpu" / "synthetic"
    cfg = compose(
        [
            "protocol=tiny_cpu",
            "protocol.max_new_tokens=4",
            f"model.path={assets / 'model'}",
            f"benchmark.annotation_path={assets / 'data' / 'test.jsonl'}",
            f"paths.log_dir={tmp_path}",
            f"paths.run_dir={run_dir}",
            "run_name=tiny",
            "eval.device=cpu",
            "eval.batch_size=2",
        ]
    )
    summary = run(cfg)
    assert summary["complete"] and summary["counts"]["done"] == 3
    results = json.loads((run_dir / "results.json").read_text())
    assert results["model"]["label"] == "tiny" and results["protocol"]["max_new_tokens"] == 4
    assert (run_dir / "config.yaml").is_file() and (tmp_path / "eval" / "weights_sha256.json").is_file()
    capsys.readouterr()

    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(tmp_path / "eval"), "--out", str(tmp_path / "report"), "--no-plots"])
    assert exit_info.value.code == 0
    assert "| tiny | tiny_cpu |" in (tmp_path / "report" / "table.md").read_text()
    with pytest.raises(SystemExit) as exit_info:
        main(["merge", str(run_dir)])
    assert exit_info.value.code == 0 and '"complete": true' in capsys.readouterr().out


def test_a_real_checkpoint_path_is_never_handed_to_the_tiny_model_builder(tmp_path):
    from vt_eval.cli import _prepare

    missing = compose(["model=qwen25vl_7b", f"model.path={tmp_path / 'nope'}", "paths.run_dir=/x"])
    with pytest.raises(FileNotFoundError, match="not a model directory"):
        _prepare(missing)
