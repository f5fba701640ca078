"""The SFT loss as small pure functions: which positions are predicted, their summed cross-entropy,
and the normalisation that keeps a step's loss identical across data-parallel layouts.

Normalisation. A mean over the tokens of each micro-batch (what HF's built-in loss does) weights a
token by 1 / (tokens in its micro-batch), so the same data gives different gradients with 2 samples
on 1 process, 1 sample on each of 2 processes, or 1 sample × 2 accumulation steps, whenever sequence
lengths differ. We use the per-token mean over the whole optimizer step instead:

    loss(step) = sum of every label token's cross-entropy, over all micro-batches and ranks
                 / number of label tokens in the step, over all micro-batches and ranks

Each micro-batch contributes `its token-loss sum × reduction_scale / step token count`; the step token
count comes from the data layer (a window of micro-batches is counted before its first backward) and
one all-reduce; `reduction_scale` undoes the frameworks' averaging (vt_model.training.batching). The
result depends only on which samples form the step, not on how they are laid out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def predicted_positions(labels: torch.Tensor) -> torch.Tensor:
    """(B, L) labels -> (B, L) bool: position t is kept when it predicts a label at t + 1."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return keep


def label_token_count(labels: torch.Tensor) -> int:
    """Tokens that carry a loss in a batch (after the causal shift)."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def shifted_targets(labels: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """(N,) the labels predicted at the kept positions, in the row-major order of `keep`."""
    nxt = torch.full_like(labels, IGNORE_INDEX)
    nxt[:, :-1] = labels[:, 1:]
    return nxt[keep]


def token_loss_sum(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
    """logits (N, V) at kept positions, targets (N,) -> (summed cross-entropy in float32, N)."""
    loss = F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX, reduction="sum")
    return loss, int((targets != IGNORE_INDEX).sum())


def step_normalised(loss_sum: torch.Tensor, step_tokens: torch.Tensor | float, scale: float) -> torch.Tensor:
    """The micro-batch loss to back-propagate: loss_sum × scale / step_tokens (step_tokens over all
    ranks and micro-batches of the optimizer step, at least 1)."""
    denominator = torch.as_tensor(step_tokens, dtype=loss_sum.dtype, device=loss_sum.device).clamp_min(1)
    return loss_sum * scale / denominator
