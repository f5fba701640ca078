"""The GRPO loss as pure tensor functions (method.md §7.1), each checkable by hand.

Notation: N = completions in the (micro-)batch (B prompts × G), L = padded completion length.
`logp`, `old_logp`, `ref_logp` are the log-probabilities of the sampled completion tokens under the
current policy, the policy that generated them, and the frozen reference: `[N, L]`. `mask` `[N, L]`
is True on completion tokens. `advantages` `[N]` come from `vt_grpo.advantages`.

    ρ_t      = exp(logp_t - old_logp_t)                                   [N, L]
    surr_t   = min(ρ_t Â, clip(ρ_t, 1 - ε_low, 1 + ε_high) Â)            [N, L]
    kl_t     = k3(logp_t, ref_logp_t)                                     [N, L]
    loss     = -aggregate(surr_t - β kl_t, mask)                           scalar

With one policy update per rollout batch, old_logp is logp.detach(): ρ = 1, clipping never acts and
the gradient is the plain policy gradient Â ∇logp (Video-R1's regime). With several updates per
batch, the stored old_logp make ρ depart from 1 and the clip bounds (DAPO's separate ε_low and
ε_high) act.

Aggregation (how token terms become one scalar; the variants differ in how a token is weighted):
- "seq_mean": mean over each sequence's tokens, then mean over sequences (the GRPO paper; a token of
  a short completion weighs more than one of a long completion).
- "token_mean": sum over all tokens / number of tokens in the batch (DAPO; every token weighs the same).
- "constant": sum / (N × max_len) (Dr. GRPO; a constant denominator, no length bias). Pass the
  configured maximum completion length as `max_len`; the default, the padded width L, changes from
  batch to batch and is not constant.

Micro-batches and ranks. Each variant divides by a denominator that belongs to the whole optimizer
step: the number of sequences (seq_mean), of tokens (token_mean) or N × max_len (constant). When a
step is split across micro-batches or ranks, pass that global value as `normaliser` so that each
micro-batch returns its share and the shares sum to the step's loss; a per-micro-batch token mean
would weight tokens by 1 / (tokens in their micro-batch) and depend on the layout (as vt_sft.loss
explains for SFT). The caller then must not average the micro-batch losses again (undo the
framework's division by the accumulation steps / world size, as vt_sft does).

Padding. Masked positions may hold anything (the log-prob pass leaves garbage there). `grpo_loss`
sets all three log-probs to 0 at masked positions before any exp, so a huge padding value can
neither overflow to inf nor turn into NaN through inf × 0, in the value or in the gradient.
"""

from __future__ import annotations

import torch

KL_ESTIMATORS = ("k3", "k1", "k2")
AGGREGATIONS = ("seq_mean", "token_mean", "constant")


def clipped_surrogate(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    eps_low: float,
    eps_high: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's clipped objective per token (to be maximised) and where the clip is active.

    logp, old_logp [N, L]; advantages [N] -> (objective [N, L], clipped_low [N, L] bool,
    clipped_high [N, L] bool). A token is "clipped" when the clipped term is the minimum and has no
    gradient: ρ < 1 - ε_low with Â < 0, or ρ > 1 + ε_high with Â > 0.
    """
    ratio = torch.exp(logp - old_logp)  # [N, L]
    adv = advantages[:, None].to(ratio.dtype)  # [N, 1]
    unclipped = ratio * adv  # [N, L]
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv  # [N, L]
    objective = torch.minimum(unclipped, clipped)  # [N, L]
    clipped_low = (ratio < 1.0 - eps_low) & (adv < 0)  # [N, L]
    clipped_high = (ratio > 1.0 + eps_high) & (adv > 0)  # [N, L]
    return objective, clipped_low, clipped_high


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(π_θ ‖ π_ref) from tokens sampled from π_θ, [N, L] -> [N, L].

    With d = ref_logp - logp (log of π_ref / π_θ at the sampled token), Schulman's estimators:
    k1 = -d (unbiased, can be negative), k2 = d² / 2 (biased, >= 0), k3 = exp(d) - d - 1 (unbiased
    and >= 0; the GRPO paper's and TRL's choice, our default).
    """
    d = ref_logp - logp  # [N, L]
    if estimator == "k3":
        return torch.exp(d) - d - 1.0
    if estimator == "k1":
        return -d
    if estimator == "k2":
        return 0.5 * d * d
    raise ValueError(f"estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")


def aggregate(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "seq_mean",
    max_len: int | None = None,
    normaliser: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """per_token [N, L], mask [N, L] -> scalar (see the module doc for the three modes).

    `normaliser` replaces the denominator: the number of sequences (seq_mean), of tokens
    (token_mean) or N × max_len (constant) of the whole optimizer step, for micro-batching. A
    sequence without tokens contributes 0 to seq_mean but still counts as a sequence.
    """
    mask = mask.to(torch.bool)
    # where, not ×: a NaN or inf at padding must vanish, and inf × 0 is NaN.
    masked = torch.where(mask, per_token, torch.zeros_like(per_token))  # [N, L]
    if mode == "seq_mean":
        lengths = mask.sum(dim=1).clamp_min(1).to(per_token.dtype)  # [N]
        numerator = (masked.sum(dim=1) / lengths).sum()  # scalar: sum of per-sequence means
        default = per_token.shape[0]
    elif mode == "token_mean":
        numerator = masked.sum()
        default = mask.sum()
    elif mode == "constant":
        numerator = masked.sum()
        default = per_token.shape[0] * (per_token.shape[1] if max_len is None else max_len)
    else:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {mode!r}")
    denominator = default if normaliser is None else normaliser
    denominator = torch.as_tensor(denominator, dtype=per_token.dtype, device=per_token.device)
    return numerator / denominator.clamp_min(1)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Token mean of [N, L] values over the mask, as a detached float32 scalar (a metric)."""
    values = values.detach().float()
    return torch.where(mask, values, torch.zeros_like(values)).sum() / mask.sum().clamp_min(1)


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor | None,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    beta: float,
    eps_low: float,
    eps_high: float,
    aggregation: str = "seq_mean",
    kl_estimator: str = "k3",
    max_len: int | None = None,
    normaliser: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The GRPO loss (to be minimised) and detached metrics.

    logp [N, L] (with grad); old_logp [N, L] or None (= logp.detach(): one update per batch);
    ref_logp [N, L] or None (only with beta == 0); advantages [N]; mask [N, L] bool.

    Metrics (token means over the mask): `clip_fraction_low`, `clip_fraction_high`,
    `clip_fraction` (their sum), `kl` (the chosen estimator; 0 without a reference), `ratio_mean`.
    """
    mask = mask.to(torch.bool)
    zeros = torch.zeros_like(logp)
    # Zero every log-prob at padding so that exp(·) there is exp(0) (see the module doc).
    logp = torch.where(mask, logp, zeros)  # [N, L]
    old = logp.detach() if old_logp is None else torch.where(mask, old_logp.detach(), zeros)  # [N, L]
    objective, clipped_low, clipped_high = clipped_surrogate(logp, old, advantages, eps_low, eps_high)
    if ref_logp is None:
        if beta != 0:
            raise ValueError("a KL penalty (beta != 0) needs ref_logp")
        kl = zeros  # [N, L]
    else:
        kl = kl_penalty(logp, torch.where(mask, ref_logp.detach(), zeros), kl_estimator)  # [N, L]
    per_token = -(objective - beta * kl)  # [N, L]
    loss = aggregate(per_token, mask, aggregation, max_len=max_len, normaliser=normaliser)
    low, high = _masked_mean(clipped_low, mask), _masked_mean(clipped_high, mask)
    metrics = {
        "clip_fraction_low": low,
        "clip_fraction_high": high,
        "clip_fraction": low + high,
        "kl": _masked_mean(kl, mask),
        "ratio_mean": _masked_mean(torch.exp(logp - old), mask),
    }
    return loss, metrics
