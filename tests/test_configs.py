"""Every config composes and its objects instantiate, without loading weights (style.md H6, A7).

One parametrised test over: every primary config in conf/ (discovered: conf/*.yaml) × (no experiment +
every experiment of that primary) × every trainer/strategy option, plus every other option of every
config group the primary's defaults list names. An experiment belongs to the primary whose app its
header names (`# vt-sft experiment=...` -> conf/sft.yaml), so GRPO/eval experiments join automatically.
Experiments in subfolders of experiments/experiment/ are found too, under their Hydra name: the path
relative to that folder without `.yaml` (experiments/experiment/ablations/frames_32.yaml ->
`experiment=ablations/frames_32`).

For each composition: every `_target_` resolves and its signature accepts the node's keys (bound, not
called: trainers, loggers, launchers and asset builders are not run); the LightningModule, the data
module, the batch sizes, the callbacks and the strategy are instantiated (models and tokenizers are
`_partial_` factories, so nothing is loaded).
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
EXPERIMENTS = ROOT / "experiments" / "experiment"
PRIMARIES = sorted(p.stem for p in CONF.glob("*.yaml"))
STRATEGIES = sorted(p.stem for p in (CONF / "trainer" / "strategy").glob("*.yaml"))
# Nodes instantiated for real (cheap, no weights); everything else with a _target_ is only bound.
INSTANTIATED = ("module", "datamodule", "batch", "callbacks", "trainer.strategy")
_SPECIAL_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}


def experiment_files() -> list[Path]:
    """Every experiment config, subfolders included (Hydra reads `experiment=a/b` from a/b.yaml)."""
    return sorted(EXPERIMENTS.rglob("*.yaml"))


def experiment_name(path: Path) -> str:
    """The Hydra name of an experiment file: its path under experiments/experiment/, without .yaml."""
    return path.relative_to(EXPERIMENTS).with_suffix("").as_posix()


def primary_of(experiment: Path) -> str | None:
    """The primary an experiment belongs to: the `vt-<name>` app named in its header comment."""
    for line in experiment.read_text().splitlines():
        if not line.startswith("#"):
            break
        match = re.search(r"\bvt-(\w+)\b", line)
        if match:
            return match.group(1)
    return None


def primary_groups(primary: str) -> list[str]:
    """Config groups the primary's defaults list selects (hydra/*, experiment and local excluded)."""
    defaults = yaml.safe_load((CONF / f"{primary}.yaml").read_text()).get("defaults", [])
    groups = []
    for entry in defaults:
        if isinstance(entry, dict):
            (key,) = entry
            key = key.removeprefix("optional ").removeprefix("override ").strip()
            if key not in ("experiment", "local") and not key.startswith("hydra/"):
                groups.append(key)
    return groups


def cases() -> list:
    out = []
    for primary in PRIMARIES:
        experiments = [None] + [experiment_name(p) for p in experiment_files() if primary_of(p) == primary]
        # Primaries without a Lightning trainer (vt-eval) have no strategy axis.
        strategies = STRATEGIES if "trainer/strategy" in primary_groups(primary) else [None]
        for experiment in experiments:
            for strategy in strategies:
                overrides = ([f"trainer/strategy={strategy}"] if strategy else []) + (
                    [f"experiment={experiment}"] if experiment else [])
                name = "-".join(x for x in (primary, experiment or "default", strategy) if x)
                out.append(pytest.param(primary, overrides, id=name))
        for group in primary_groups(primary) + ["hydra/launcher"]:
            if group == "trainer/strategy":
                continue
            for option in sorted((CONF / group).glob("*.yaml")):
                value = f"[{option.stem}]" if group == "logger" else option.stem
                out.append(pytest.param(primary, [f"{group}={value}"], id=f"{primary}-{group}={option.stem}"))
    return out


def test_every_experiment_names_an_existing_primary():
    for experiment in experiment_files():
        name = experiment_name(experiment)
        assert primary_of(experiment) in PRIMARIES, f"{name}: its header must name its app"
    for path in [*CONF.rglob("*.yaml"), *experiment_files()]:
        assert path.read_text().lstrip().startswith("#"), f"{path}: open with its launch command in a comment"


def _locate(target: str):
    from hydra._internal.utils import _locate

    return _locate(target)


def _bind(node, path: str) -> None:
    """Resolve node's _target_ and bind its keys to the signature (recursively for nested targets)."""
    from omegaconf import DictConfig, ListConfig

    if isinstance(node, ListConfig):
        for i, item in enumerate(node):
            _bind(item, f"{path}[{i}]")
        return
    if not isinstance(node, DictConfig):
        return
    for key, value in node.items():
        if key not in _SPECIAL_KEYS:
            _bind(value, f"{path}.{key}")
    if "_target_" not in node:
        return
    target = _locate(node["_target_"])
    kwargs = {k: v for k, v in node.items() if k not in _SPECIAL_KEYS}
    try:
        inspect.signature(target).bind_partial(**kwargs)
    except TypeError as err:
        raise AssertionError(f"{path}: {node['_target_']} does not accept {sorted(kwargs)}: {err}") from None


def _select(cfg, dotted: str):
    from omegaconf import OmegaConf

    return OmegaConf.select(cfg, dotted)


@pytest.mark.parametrize(("primary", "overrides"), cases())
def test_config_composes_and_instantiates(primary, overrides, tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import OmegaConf, open_dict

    from vt_model.training.app import instantiate_group, register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(primary, overrides=overrides, return_hydra_config=True)
    if "paths" in cfg and "run_dir" in cfg.paths:
        cfg.paths.run_dir = str(tmp_path)  # ${hydra:runtime.output_dir} exists only inside a Hydra run
    launcher = OmegaConf.create(OmegaConf.to_container(cfg.hydra.launcher, resolve=True))
    with open_dict(cfg):
        del cfg["hydra"]  # its ${hydra:...} and launcher nodes are checked separately (bound below)
    OmegaConf.resolve(cfg)  # every interpolation resolves (a typo in ${...} fails here)
    _bind(cfg, primary)
    _bind(launcher, "hydra.launcher")

    for dotted in INSTANTIATED:
        node = _select(cfg, dotted)
        if node is None:
            continue
        objects = instantiate_group(node) if dotted == "callbacks" else [instantiate(node)]
        assert all(obj is not None for obj in objects), dotted
    if "batch" in cfg:
        batch = instantiate(cfg.batch)
        assert batch.world_size == cfg.trainer.devices * cfg.trainer.num_nodes
    if "module" in cfg:
        assert instantiate(cfg.module).model is None  # a factory: no weights until setup
