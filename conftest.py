"""Repository-wide pytest hooks: tests marked `gpu` run only where a CUDA device is present.

Without CUDA they are deselected (counted in the summary line as "deselected", with the reason printed),
not skipped one by one; `experiments/perf/gpu_check.py` runs them on the GPU machine with `-m gpu`.
`VT_REQUIRE_GPU=1` turns a missing device into an error, so a GPU job cannot pass by selecting nothing.
"""

from __future__ import annotations

import os

_DESELECTED: list[str] = []


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    if os.environ.get("VT_REQUIRE_GPU") == "1":
        raise RuntimeError(f"VT_REQUIRE_GPU=1 but torch {torch.__version__} sees no CUDA device; "
                           f"{len(gpu_items)} gpu tests would not run")
    config.hook.pytest_deselected(items=gpu_items)
    items[:] = [item for item in items if item.get_closest_marker("gpu") is None]
    _DESELECTED.extend(item.nodeid for item in gpu_items)


def pytest_terminal_summary(terminalreporter):
    if _DESELECTED:
        terminalreporter.write_line(f"{len(_DESELECTED)} gpu-marked tests deselected: no CUDA device here "
                                    "(they run in experiments/perf/gpu_check.py)")
