"""DeepSpeed ZeRO on CPU through Lightning, for tests of ZeRO-2/3 semantics on machines without CUDA.

Lightning's `DeepSpeedStrategy` refuses any accelerator but CUDA. This subclass changes exactly the three
behaviours shared/docs/stack.md §8 lists, and nothing else (optimizer, checkpointing, accumulation and
precision handling stay Lightning's):

1. `setup_environment` runs the plain DDP environment setup, skipping the CUDA-only check;
2. `setup_distributed` skips the CUDA device-index validation ("The selected device indices [None] don't
   match the local rank values"), then resets the seed, sets the world ranks and initialises DeepSpeed's
   distributed backend directly (gloo on CPU);
3. `root_device` is `cpu:0`, a CPU device *with an index*: Lightning passes `root_device.index` to
   `deepspeed.initialize` as the device rank, and None fails there.

On GPUs use Lightning's own `DeepSpeedStrategy` (conf/trainer/strategy/deepspeed_*.yaml); the `*_cpu`
options select this class. The first use compiles DeepSpeed's `deepspeed_shm_comm_op` (~25 s): point
`TORCH_EXTENSIONS_DIR` at a persistent directory.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy


class CPUDeepSpeedStrategy(DeepSpeedStrategy):
    """`DeepSpeedStrategy` for `accelerator="cpu"`; takes the same arguments (`stage`, offload flags...).
    `process_group_backend` defaults to gloo."""

    strategy_name = "deepspeed_cpu"

    def __init__(self, *args: Any, process_group_backend: str | None = "gloo", **kwargs: Any) -> None:
        super().__init__(*args, process_group_backend=process_group_backend, **kwargs)

    def setup_environment(self) -> None:
        # DeepSpeedStrategy.setup_environment raises unless the accelerator is CUDA; the DDP one is what
        # it calls after that check.
        DDPStrategy.setup_environment(self)

    def setup_distributed(self) -> None:
        assert self.parallel_devices is not None
        # DeepSpeedStrategy.setup_distributed also runs _validate_device_index_selection, which needs
        # indexed (CUDA) devices.
        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()

    @property
    def root_device(self) -> torch.device:
        return torch.device("cpu", 0)
