"""The policy under the training strategy: the reference policy π_ref for the KL term, and the policy's
parameters gathered for generation under ZeRO-3.

Reference policy. β > 0 needs π_ref = the start policy. With LoRA it is the same model with the adapter
disabled (`with model.disable_adapter():`), so no second copy exists; that is only the start policy
while nothing outside the adapter trains, which is checked. With full fine-tuning it is a frozen deep
copy, made before any update and before the strategy wraps the model (GRPOModule builds the policy in
`setup` for this). The copy is held in a plain object, outside the LightningModule's submodules, so it
is not in checkpoints (on resume it is rebuilt from the same start weights), not wrapped by DDP and not
partitioned by ZeRO: under ZeRO-3 every rank holds a whole frozen copy (bf16 7B: ~15 GB per GPU).

Generation under ZeRO-3 (`gathered_for_generation`) lifts DeepSpeed's module hooks through its private
`parameter_offload` API, the pair TRL relies on; the function's docstring says why.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from vt_grpo.rollout import policy_logprobs

REFERENCE_MODES = ("auto", "adapter_disabled", "copy")


def is_peft(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "get_base_model")


def is_partitioned(model) -> bool:
    """ZeRO-3 partitions parameters at construction (they carry DeepSpeed's `ds_id`)."""
    return any(hasattr(p, "ds_id") for p in model.parameters())


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy with gradients off, in eval mode."""
    reference = copy.deepcopy(model)
    reference.requires_grad_(False)
    return reference.eval()


def check_reference_mode(mode: str) -> str:
    if mode not in REFERENCE_MODES:
        raise ValueError(f"reference must be one of {REFERENCE_MODES}, got {mode!r}")
    return mode


class ReferencePolicy:
    """π_ref for one policy. `kind`: "none" (β = 0: no reference), "adapter_disabled" (LoRA: the policy
    with its adapter disabled) or "copy" (a frozen copy of the start policy, `model`).

    Built by `for_policy` before any update; `logprobs` runs it without gradients on a micro-batch.
    """

    def __init__(self, kind: str, frozen: torch.nn.Module | None = None):
        self.kind = kind
        # A plain list, not an attribute an nn.Module would register: the copy stays out of the owner's
        # state_dict() and is not moved, wrapped or partitioned by the strategy (module docstring).
        self._frozen: list[torch.nn.Module] = [] if frozen is None else [frozen]

    @classmethod
    def for_policy(cls, policy: torch.nn.Module, *, mode: str, needed: bool) -> ReferencePolicy:
        """The reference for `policy` at its start weights. mode: "auto" (LoRA: adapter disabled; else:
        a frozen copy), "adapter_disabled" or "copy"; needed: False when β = 0 (no reference)."""
        if not needed:
            return cls("none")
        if mode == "auto":
            mode = "adapter_disabled" if is_peft(policy) else "copy"
        if mode == "adapter_disabled":
            if not is_peft(policy):
                raise ValueError("reference='adapter_disabled' needs a LoRA (peft) model")
            drifting = [n for n, p in policy.named_parameters() if p.requires_grad and "lora_" not in n]
            if drifting:
                raise ValueError(
                    "with LoRA the reference is the model with its adapter disabled, which is the start "
                    f"policy only if nothing outside the adapter trains; trainable non-adapter parameters: "
                    f"{drifting[:3]}{'...' if len(drifting) > 3 else ''}. Freeze them (LoRA train_vision/"
                    f"train_merger false) or set reference='copy'"
                )
            return cls(mode)
        if is_partitioned(policy):
            raise ValueError(
                "the policy is already partitioned by ZeRO-3 (built under zero.Init): a frozen "
                "copy cannot be made from it; pass the model as a factory"
            )
        return cls(mode, frozen_copy(policy))

    @property
    def model(self) -> torch.nn.Module | None:
        """The frozen copy (full fine-tuning), None with LoRA (adapter disabled) or β = 0."""
        return self._frozen[0] if self._frozen else None

    def place(self, device: torch.device, dtype: torch.dtype) -> None:
        """Move the frozen copy to the policy's device and floating dtype (e.g. bf16-true converted the
        policy after the copy was made)."""
        for reference in self._frozen:
            reference.to(device)
            if dtype.is_floating_point:
                reference.to(dtype)

    @contextlib.contextmanager
    def _as_model(self, policy: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """The model to run as π_ref: the frozen copy, or the policy with its adapter disabled."""
        if self.kind == "adapter_disabled":
            with policy.disable_adapter():
                yield policy
        else:
            yield self.model

    def logprobs(
        self,
        policy: torch.nn.Module,
        batch: Mapping[str, Any],
        completion_mask: torch.Tensor,
        *,
        temperature: float,
    ) -> torch.Tensor:
        """π_ref's per-token log-probs [N, L] of the batch's completions (call under no_grad)."""
        with self._as_model(policy) as reference:
            return policy_logprobs(reference, batch, completion_mask, temperature=temperature)[0]


@contextlib.contextmanager
def gathered_for_generation(model: torch.nn.Module, engine: Any) -> Iterator[None]:
    """Under ZeRO-3, the whole policy gathered on every rank and DeepSpeed's module hooks lifted while
    it generates (a no-op for every other strategy). `engine`: the strategy's wrapped model (the
    DeepSpeed engine, whose optimizer holds the hooks).

    Generation runs one forward per new token. With partitioned parameters each of them would
    all-gather every layer again (on 8 GPUs: the whole 7B model per token), and DeepSpeed's hooks,
    whose prefetch trace was recorded over a whole GRPO step, scan that trace on every module call
    (measured on the tiny model: a 32-completion rollout took 42 s instead of 0.4 s). So, as TRL's
    `ds3_gather_for_generation`: gather once, remove the hooks, generate on plain tensors, put the
    hooks back (DeepSpeed then re-records its trace) and re-partition. Costs one copy of the weights
    per GPU during the rollout (bf16 7B: ~15 GB). With the hooks lifted, generation runs no
    collective, so ranks need no synchronised decoding (`synced_gpus`). Uses DeepSpeed's
    `parameter_offload` object (`_remove_module_hooks` / `setup_zero_stage3_hooks`, the pair TRL
    relies on) and refuses to run without it.
    """
    params = [p for p in model.parameters() if hasattr(p, "ds_id")]
    if not params:
        yield
        return
    import deepspeed

    optimizer = getattr(engine, "optimizer", None)
    offload = getattr(optimizer, "parameter_offload", None)
    if not (hasattr(offload, "_remove_module_hooks") and hasattr(offload, "setup_zero_stage3_hooks")):
        raise RuntimeError(
            "ZeRO-3 rollouts need DeepSpeed's parameter_offload hooks API "
            "(_remove_module_hooks / setup_zero_stage3_hooks), missing in this version"
        )
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        for param in params:
            param.ds_active_sub_modules.clear()
        offload._remove_module_hooks()
        try:
            yield
        finally:
            offload.setup_zero_stage3_hooks()
