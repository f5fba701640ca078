"""Helpers for the Hydra apps (`vt-sft`, `vt-grpo`): locate the config tree, register resolvers, print
and save the composed config, run `prepare:` steps, instantiate callback/logger groups, and make
Lightning's per-rank relaunch run exactly the current job.

Where the configs live. The YAML tree is data, not library code (style.md H1): `conf/` and
`experiments/` at the repository root, shipped inside this package as `vt_model/configs/` (symlinks into
the checkout in the source tree, copied as real files into a wheel). `config_dir()` takes, in order:
- `VT_ROOT`, a checkout named explicitly;
- the first checkout above the working directory;
- the checkout this package is installed from (an editable install);
- the configs shipped in the installed package (a wheel, no checkout anywhere).
It exports `VT_CONFIG_ROOT`, the directory holding the chosen `conf/` and `experiments/`, which the
primary configs' `hydra.searchpath` (`file://${oc.env:VT_CONFIG_ROOT,...}/experiments`) reads, and, for a
checkout, `VT_ROOT`, under which runs and built assets go (conf/paths/default.yaml; the working directory
otherwise). Users add their own config directory on top with Hydra's `--config-dir DIR` (`-cd DIR`):
new experiments (`DIR/experiment/*.yaml`) and new options of any group (README.md).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CONF_DIR = "conf"
EXPERIMENTS_DIR = "experiments"
# conf/ and experiments/experiment/ as package data (packages/vt-model/pyproject.toml).
SHIPPED_CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RESOLVERS_REGISTERED = False
# Hydra flags whose value is the next argument.
_FLAGS_WITH_VALUE = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd"}
# Hydra overrides that belong to the launching process only, never to a relaunched rank.
_LAUNCH_ONLY = ("hydra/launcher", "hydra/sweeper", "hydra.launcher", "hydra.sweeper", "hydra.sweep",
                "hydra.run.dir", "hydra.mode", "hydra.job.name", "hydra.output_subdir")


def _is_root(path: Path) -> bool:
    return (path / CONF_DIR).is_dir() and (path / EXPERIMENTS_DIR).is_dir()


def find_root(start: str | os.PathLike | None = None) -> Path | None:
    """The repository checkout holding conf/ and experiments/: VT_ROOT, else the first one above `start`
    (the working directory), else the one this package is installed from; None outside any checkout."""
    env = os.environ.get("VT_ROOT")
    if env:
        root = Path(env).expanduser().resolve()
        if not _is_root(root):
            raise FileNotFoundError(f"VT_ROOT={env} has no {CONF_DIR}/ and {EXPERIMENTS_DIR}/")
        return root
    for base in (Path(start or os.getcwd()).resolve(), Path(__file__).resolve()):
        for candidate in (base, *base.parents):
            if _is_root(candidate):
                return candidate
    return None


def config_dir() -> str:
    """Absolute conf/ directory (a checkout's, else the shipped one); exports VT_CONFIG_ROOT for the
    configs' experiments search path and, for a checkout, VT_ROOT for their paths."""
    root = find_root()
    if root is not None:
        os.environ["VT_ROOT"] = str(root)
    elif _is_root(SHIPPED_CONFIGS):
        root = SHIPPED_CONFIGS
    else:
        raise FileNotFoundError(f"cannot find the config tree ({CONF_DIR}/ and {EXPERIMENTS_DIR}/): run from "
                                f"the repository, set VT_ROOT, or install vt-model with its configs")
    os.environ["VT_CONFIG_ROOT"] = str(root)
    return str(root / CONF_DIR)


def register_resolvers() -> None:
    """`${vt.mul:a,b,...}`: a product of integers (world size = devices × nodes)."""
    global RESOLVERS_REGISTERED
    from omegaconf import OmegaConf

    from vt_model.training.batching import product

    if not OmegaConf.has_resolver("vt.mul"):
        OmegaConf.register_new_resolver("vt.mul", product)
    RESOLVERS_REGISTERED = True


def is_rank_zero() -> bool:
    """Rank 0 by the launch environment, before any process group exists (Lightning's own rule)."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def config_yaml(cfg: Any, resolve: bool = True) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(cfg, resolve=resolve)


def print_and_save_config(cfg: Any, run_dir: str | os.PathLike, name: str = "config.yaml") -> Path:
    """Print the resolved config and write it to `run_dir/name` (rank 0 only; Hydra's own .hydra/ copy
    is the unresolved composition). Returns the file path."""
    from omegaconf import OmegaConf

    path = Path(run_dir) / name
    if not is_rank_zero():
        return path
    text = config_yaml(cfg, resolve=True)
    print(text, flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    # The composed (unresolved) config next to it, for runs without Hydra's output dir (compose API).
    (Path(run_dir) / f"{path.stem}.composed.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=False))
    return path


def run_prepare(nodes: Iterable[Any]) -> list[Any]:
    """Instantiate each non-null `prepare:` node: a `_target_` that creates a missing asset."""
    from hydra.utils import instantiate

    return [instantiate(node) for node in nodes if node is not None]


def instantiate_group(group: Mapping[str, Any] | None) -> list[Any]:
    """Instantiate every non-null entry with a `_target_` of a name -> config mapping (callbacks,
    loggers); entries set to null are switched off."""
    from hydra.utils import instantiate

    if not group:
        return []
    return [instantiate(node) for node in group.values() if node is not None and "_target_" in node]


def relaunch_argv(argv: list[str], task_overrides: Iterable[str],
                  hydra_overrides: Iterable[str]) -> list[str]:
    """argv for a rank Lightning relaunches: this job's own overrides (sweep values resolved, no `-m`)
    plus the non-launch hydra overrides, keeping config-location flags."""
    kept = [argv[0]]
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg in _FLAGS_WITH_VALUE and i + 1 < len(argv):
            kept += [arg, argv[i + 1]]
            i += 2
            continue
        if any(arg.startswith(f"{flag}=") for flag in _FLAGS_WITH_VALUE):
            kept.append(arg)
        i += 1
    hydra_kept = [o for o in hydra_overrides if not o.lstrip("~+").startswith(_LAUNCH_ONLY)]
    return kept + list(task_overrides) + hydra_kept


def pin_relaunch_command() -> None:
    """Make Lightning's per-rank relaunch (DDP/DeepSpeed on one node without a cluster launcher) run
    exactly this job, in this job's output directory (style.md A3).

    Lightning re-executes `sys.argv` with `hydra.run.dir=<HydraConfig run.dir>`. Under `-m` that argv
    is the whole sweep and run.dir is not the job's directory, so a child would start a sweep of its own
    in another directory. Here argv becomes this job's overrides and run.dir its output directory.
    """
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict, read_write

    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.instance().cfg.hydra  # type: ignore[union-attr]
    sys.argv = relaunch_argv(sys.argv, list(hydra_cfg.overrides.task), list(hydra_cfg.overrides.hydra))
    with read_write(hydra_cfg), open_dict(hydra_cfg):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir


def output_dir(default: str | os.PathLike | None = None) -> str:
    """Hydra's output directory of this job, else `default` (compose API, notebooks)."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return str(HydraConfig.get().runtime.output_dir)
    if default is None:
        raise RuntimeError("no Hydra run in progress; set paths.run_dir explicitly")
    return str(default)


# Set by Lightning's launcher in the launching process (not only in the children it starts).
_LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "RANK",
               "PL_GLOBAL_SEED", "PL_SEED_WORKERS")


@contextlib.contextmanager
def isolated_job() -> Iterator[None]:
    """Leave the process as the job found it: the distributed process group destroyed, and the launch
    variables Lightning exported (LOCAL_RANK, MASTER_PORT, ...) restored.

    Needed when one process runs several jobs (a `-m` sweep with the basic launcher, a notebook): the
    next job's Trainer would otherwise reuse the previous job's dead process group, or read LOCAL_RANK
    and believe its ranks were started externally, and hang.
    """
    before = {key: os.environ.get(key) for key in _LAUNCH_ENV}
    try:
        yield
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
