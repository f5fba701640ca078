"""The apps run from installed, non-editable packages outside any checkout, with the configs vt-model
ships (vt_model.training.app.config_dir), and compose a user's own config directory on top of them
(Hydra's `--config-dir`, README.md "Use the configs outside the repository").

The venv is made offline: the five packages are built from a copy of the checkout with pip's
`--no-index --no-build-isolation`, and the third-party dependencies (setuptools for the build included)
come from this interpreter's site-packages through a .pth file. Lines of a .pth are appended to
sys.path after the venv's own site-packages, and the .pth files of the added directory (the editable
installs of this checkout) are not processed, so vt_* resolve to the venv (asserted below).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sysconfig
import venv
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["vt-data", "vt-model", "vt-sft", "vt-grpo", "vt-eval"]

def _env() -> dict[str, str]:
    """This environment without any hint of the checkout, and pip without its configuration (offline)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("VT_ROOT", "VT_CONFIG_ROOT", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return {**env, "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INPUT": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def _run(cmd: list, cwd: Path) -> str:
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, f"{cmd}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv outside the repository holding the five packages, non-editable."""
    base = tmp_path_factory.mktemp("installed")
    # A copy of what the build reads, so build/ and *.egg-info land there and not in the repository;
    # vt_model/configs/ stays a pair of relative symlinks into the copy's conf/ and experiments/.
    checkout = base / "checkout"
    for dist in PACKAGES:
        shutil.copytree(ROOT / "packages" / dist, checkout / "packages" / dist, symlinks=True,
                        ignore=shutil.ignore_patterns("tests", "build", "*.egg-info", "__pycache__"))
    shutil.copytree(ROOT / "conf", checkout / "conf")
    shutil.copytree(ROOT / "experiments" / "experiment", checkout / "experiments" / "experiment")
    (checkout / "conf" / "local" / "default.yaml").write_text("leaked: true\n")  # a checkout's own

    env_dir = base / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], base).strip()
    ours = sorted({sysconfig.get_paths()[key] for key in ("purelib", "platlib")})
    (Path(site) / "outer_site_packages.pth").write_text("\n".join(ours) + "\n")
    # --ignore-installed: pip sees this checkout's editable vt-* through the .pth and must neither skip
    # nor touch them.
    _run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
          "--ignore-installed", *[checkout / "packages" / dist for dist in PACKAGES]], base)
    return env_dir


@pytest.fixture
def elsewhere(tmp_path) -> Path:
    """A working directory with no checkout above it."""
    path = tmp_path / "work"
    path.mkdir()
    assert not any((p / "conf").is_dir() and (p / "experiments").is_dir() for p in (path, *path.parents))
    return path


def _compose(installed: Path, cwd: Path, app: str, *overrides: str) -> dict:
    return yaml.safe_load(_run([installed / "bin" / app, "--cfg", "job", *overrides], cwd))


def _leaves(node: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_packages_and_configs_are_installed_in_the_venv(installed, elsewhere):
    modules = "vt_data, vt_model, vt_sft, vt_grpo, vt_eval"
    code = f"import json, {modules}; print(json.dumps({{m.__name__: m.__file__ for m in ({modules})}}))"
    files = json.loads(_run([installed / "bin" / "python", "-c", code], elsewhere))
    for name, file in files.items():
        assert Path(file).resolve().is_relative_to(installed.resolve()), (name, file)
    configs = Path(files["vt_model"]).parent / "configs"
    for path in (configs, configs / "conf", configs / "experiments" / "experiment"):
        assert path.is_dir() and not path.is_symlink(), path
    assert (configs / "conf" / "sft.yaml").is_file()
    assert (configs / "experiments" / "experiment" / "ablations" / "frames_32.yaml").is_file()
    assert not (configs / "conf" / "local" / "default.yaml").exists()
    assert not list((configs / "experiments").glob("*/*.py")), "only experiments/experiment/*.yaml ship"


@pytest.mark.parametrize(("app", "experiment"), [("vt-sft", "tiny_cpu"), ("vt-grpo", "tiny_cpu_grpo")])
def test_app_composes_a_shipped_experiment_outside_the_repository(installed, elsewhere, app, experiment):
    cfg = _compose(installed, elsewhere, app, f"experiment={experiment}")
    diff = yaml.safe_load((ROOT / "experiments" / "experiment" / f"{experiment}.yaml").read_text())
    diff.pop("defaults", None)
    expected = _leaves(diff)
    assert expected
    got = _leaves(cfg)
    assert {key: got.get(key) for key in expected} == expected
    assert cfg["paths"]["root_dir"] == "${oc.env:VT_ROOT,.}"  # runs go under the working directory


def test_eval_composes_outside_the_repository(installed, elsewhere):
    cfg = _compose(installed, elsewhere, "vt-eval", "benchmark=video_holmes")
    assert cfg["task_name"] == "eval" and cfg["benchmark"]["name"] == "video_holmes"


def test_user_config_dir_adds_experiments_and_group_options(installed, elsewhere):
    user = elsewhere / "my_configs"
    (user / "experiment").mkdir(parents=True)
    (user / "precision").mkdir()
    (user / "precision" / "my_precision.yaml").write_text("# @package trainer\nprecision: 16-mixed\n")
    (user / "experiment" / "my_exp.yaml").write_text(
        "# @package _global_\n"
        "defaults:\n"
        "  - override /precision: my_precision\n"
        "task_name: my_exp\n"
        "epochs: 7\n"
        "batch:\n"
        "  micro_batch_per_device: 3\n")
    cfg = _compose(installed, elsewhere, "vt-sft", "--config-dir", "my_configs", "experiment=my_exp")
    assert cfg["task_name"] == "my_exp" and cfg["epochs"] == 7
    assert cfg["batch"]["micro_batch_per_device"] == 3
    assert cfg["trainer"]["precision"] == "16-mixed"
    # The shipped experiments stay reachable next to the user's, and -cd is Hydra's short form.
    shipped = _compose(installed, elsewhere, "vt-sft", "-cd", str(user), "experiment=tiny_cpu",
                       "precision=my_precision")
    assert shipped["task_name"] == "sft_tiny_cpu" and shipped["trainer"]["precision"] == "16-mixed"
