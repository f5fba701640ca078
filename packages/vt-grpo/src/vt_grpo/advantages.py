"""Group-relative advantages (method.md §7.1): each completion's reward relative to the other
completions of its prompt, shared by every token of the completion.

    Â_i = (r_i - mean_g(r)) / (std_g(r) + eps)      scale="std"   (GRPO paper, TRL, Video-R1)
    Â_i =  r_i - mean_g(r)                          scale="none"  (Dr. GRPO: no std division)

Which std. We use the **sample** standard deviation (Bessel-corrected, divisor G - 1), as TRL's
`GRPOTrainer` (`torch.std`, unbiased by default) and therefore Video-R1 do: the paper's β = 0.04 and
learning rate were tuned against that scale. The population std (divisor G) would make every
advantage sqrt(G / (G - 1)) smaller (7 % for G = 8) and shift the balance against the KL term.

`eps` = 1e-4 is added to the std (not to the variance), as in TRL. It only matters for groups with a
tiny spread; groups with no spread at all are handled exactly: their advantages are set to 0 rather
than left as (r - mean) / eps, because the mean of G equal floats need not equal them bit for bit
(0.1 + 0.1 + 0.1 != 0.3) and dividing that rounding error by 1e-4 would give a spurious signal.
With G = 1 every group is zero-variance (the sample std is undefined), so all advantages are 0.

Layout: rewards are `[B*G]` (prompt-major: the G completions of a prompt are adjacent, the order
rollouts produce) or `[B, G]`; advantages are always `[B*G]` in the same order.
"""

from __future__ import annotations

import torch

SCALES = ("std", "none")


def _grouped(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """[B*G] or [B, G] -> [B, G] float, with the layout checked."""
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    rewards = torch.as_tensor(rewards)
    if not rewards.is_floating_point():
        rewards = rewards.float()
    if rewards.dim() == 2:
        if rewards.shape[1] != group_size:
            raise ValueError(f"rewards {tuple(rewards.shape)} do not have group_size {group_size} columns")
        return rewards
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards of shape {tuple(rewards.shape)} do not split into groups of {group_size}")
    return rewards.view(-1, group_size)  # [B, G]


def zero_variance_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """[B] bool: the groups whose G rewards are all exactly equal (they carry no learning signal)."""
    grouped = _grouped(rewards, group_size)  # [B, G]
    return grouped.amax(dim=1) == grouped.amin(dim=1)  # [B]


def group_advantages(
    rewards: torch.Tensor, group_size: int, *, scale: str = "std", eps: float = 1e-4
) -> torch.Tensor:
    """[B*G] or [B, G] rewards -> [B*G] advantages: mean-centred per group and, with scale="std",
    divided by (sample std of the group + eps). Zero-variance groups get exactly 0. No gradient
    flows through rewards (they are data)."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    grouped = _grouped(rewards, group_size).detach()  # [B, G]
    centred = grouped - grouped.mean(dim=1, keepdim=True)  # [B, G]
    if scale == "std" and group_size > 1:
        centred = centred / (grouped.std(dim=1, correction=1, keepdim=True) + eps)  # [B, G]
    flat = zero_variance_groups(grouped, group_size)  # [B]
    advantages = torch.where(flat[:, None], torch.zeros_like(centred), centred)  # [B, G]
    return advantages.reshape(-1)  # [B*G]
