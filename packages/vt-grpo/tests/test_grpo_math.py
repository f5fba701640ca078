"""GRPO arithmetic checked by hand: advantages, clipped surrogate, KL estimators, aggregation, loss."""

from __future__ import annotations

import math

import pytest
import torch

from vt_grpo.advantages import group_advantages, zero_variance_groups
from vt_grpo.loss import aggregate, clipped_surrogate, grpo_loss, kl_penalty

# --- the hand-written example: 2 prompts × 3 completions, lengths 4, 2, 3, 1, 4, 3 ----------------
G = 3
REWARDS = [2.0, 1.0, 0.0, 3.0, 1.0, 2.0]
LENGTHS = [4, 2, 3, 1, 4, 3]
PAD = 123.0  # garbage at padding: exp(PAD - x) overflows float32 if padding leaks into the loss
LOGP = [
    [-1.0, -0.5, -2.0, -0.3],
    [-0.7, -1.2, PAD, PAD],
    [-2.0, -0.2, -1.0, PAD],
    [-0.1, -PAD, -PAD, -PAD],
    [-1.0, -1.0, -1.0, -1.0],
    [-0.6, -0.4, -0.9, PAD],
]
OLD = [
    [-1.0, -1.0, -1.9, -0.3],  # ratios 1, e^0.5 (clipped high, Â > 0), e^-0.1, 1
    [-0.7, -1.2, -PAD, 0.0],
    [-1.5, -0.2, -1.1, 0.0],  # ratios e^-0.5 (clipped low, Â < 0), 1, e^0.1
    [-0.4, 0.0, -PAD, 0.0],  # ratio e^0.3 (clipped high, Â > 0)
    [-0.9, -1.0, -1.3, -1.0],  # ratios e^-0.1, 1, e^0.3 (not clipped: Â < 0), 1
    [-0.6, -0.4, -0.9, 0.0],
]
REF = [
    [-1.2, -0.5, -1.5, -0.4],
    [-0.5, -1.2, -PAD, PAD],
    [-2.0, -0.7, -1.0, -PAD],
    [-0.3, -PAD, PAD, 0.0],
    [-1.0, -0.8, -1.1, -1.3],
    [-0.6, -0.9, -0.5, PAD],
]
BETA, EPS_LOW, EPS_HIGH, EPS = 0.04, 0.2, 0.28, 1e-4


def tensors():
    mask = torch.tensor([[t < n for t in range(4)] for n in LENGTHS])
    return (torch.tensor(LOGP, requires_grad=True), torch.tensor(OLD), torch.tensor(REF),
            torch.tensor(REWARDS), mask)


def hand_token_losses() -> list[list[float]]:
    """Per-token -(min(ρÂ, clip(ρ)Â) - β k3), in plain Python floats."""
    # Group 1 rewards 2, 1, 0: mean 1, sample std sqrt((1 + 0 + 1) / 2) = 1.
    # Group 2 rewards 3, 1, 2: mean 2, sample std sqrt((1 + 1 + 0) / 2) = 1.
    a = 1.0 / (1.0 + EPS)
    adv = [a, 0.0, -a, a, -a, 0.0]
    losses = []
    for i, n in enumerate(LENGTHS):
        row = []
        for t in range(n):
            ratio = math.exp(LOGP[i][t] - OLD[i][t])
            clipped_ratio = min(max(ratio, 1 - EPS_LOW), 1 + EPS_HIGH)
            surrogate = min(ratio * adv[i], clipped_ratio * adv[i])
            d = REF[i][t] - LOGP[i][t]
            k3 = math.exp(d) - d - 1
            row.append(-(surrogate - BETA * k3))
        losses.append(row)
    return losses


def test_hand_example_spot_values():
    losses = hand_token_losses()
    a = 1 / 1.0001
    # Row 0, token 1: ρ = e^0.5 > 1.28 and Â > 0 -> the surrogate is 1.28 Â; ref = logp -> k3 = 0.
    assert losses[0][1] == pytest.approx(-1.28 * a)
    # Row 2, token 0: ρ = e^-0.5 < 0.8 and Â < 0 -> 0.8 × (-Â); d = 0 -> k3 = 0.
    assert losses[2][0] == pytest.approx(0.8 * a)
    # Row 1, token 0: Â = 0, d = 0.2 -> loss = β (e^0.2 - 1.2).
    assert losses[1][0] == pytest.approx(0.04 * (math.exp(0.2) - 1.2))


@pytest.mark.parametrize("aggregation", ["seq_mean", "token_mean", "constant"])
def test_loss_equals_the_hand_computed_value(aggregation):
    logp, old, ref, rewards, mask = tensors()
    advantages = group_advantages(rewards, G, eps=EPS)
    loss, metrics = grpo_loss(logp, old, ref, advantages, mask, beta=BETA, eps_low=EPS_LOW,
                              eps_high=EPS_HIGH, aggregation=aggregation, max_len=8)
    losses = hand_token_losses()
    if aggregation == "seq_mean":  # mean over tokens of each sequence, then over the 6 sequences
        expected = sum(sum(row) / len(row) for row in losses) / 6
    elif aggregation == "token_mean":  # all 17 tokens weigh the same
        expected = sum(sum(row) for row in losses) / 17
    else:  # constant: N × max_len = 6 × 8
        expected = sum(sum(row) for row in losses) / 48
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # Clipped: row 0 token 1 and row 3 token 0 (high), row 2 token 0 (low), of 17 tokens.
    assert metrics["clip_fraction_high"].item() == pytest.approx(2 / 17)
    assert metrics["clip_fraction_low"].item() == pytest.approx(1 / 17)
    loss.backward()
    assert torch.isfinite(logp.grad).all()
    assert (logp.grad[~mask] == 0).all()


def test_constant_aggregation_defaults_to_the_padded_width():
    per_token, mask = torch.ones(2, 5), torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 0, 0]])
    assert aggregate(per_token, mask, "constant").item() == pytest.approx(5 / 10)
    assert aggregate(per_token, mask, "token_mean").item() == 1.0
    assert aggregate(per_token, mask, "seq_mean").item() == 1.0


@pytest.mark.parametrize("aggregation", ["seq_mean", "token_mean", "constant"])
def test_micro_batches_with_the_global_normaliser_sum_to_the_full_loss(aggregation):
    logp, old, ref, rewards, mask = tensors()
    advantages = group_advantages(rewards, G, eps=EPS)
    kw = dict(beta=BETA, eps_low=EPS_LOW, eps_high=EPS_HIGH, aggregation=aggregation, max_len=8)
    full, _ = grpo_loss(logp, old, ref, advantages, mask, **kw)
    normaliser = {"seq_mean": 6, "token_mean": int(mask.sum()), "constant": 6 * 8}[aggregation]
    parts = [grpo_loss(logp[s], old[s], ref[s], advantages[s], mask[s], normaliser=normaliser, **kw)[0]
             for s in (slice(0, 2), slice(2, 6))]
    assert (parts[0] + parts[1]).item() == pytest.approx(full.item(), rel=1e-5)


# --- one update per batch: ratio 1, plain policy gradient ---------------------------------------
def test_one_update_per_batch_has_ratio_one_and_the_policy_gradient():
    logp, _, ref, rewards, mask = tensors()
    advantages = group_advantages(rewards, G)
    loss, metrics = grpo_loss(logp, None, ref, advantages, mask, beta=0.0, eps_low=0.2, eps_high=0.2)
    assert metrics["ratio_mean"].item() == pytest.approx(1.0)
    assert metrics["clip_fraction"].item() == 0.0
    loss.backward()
    # seq_mean: d loss / d logp_{i,t} = -Â_i / (len_i × N) on completion tokens.
    lengths = torch.tensor(LENGTHS, dtype=torch.float32)
    expected = (-advantages / (lengths * 6))[:, None].expand(6, 4) * mask
    torch.testing.assert_close(logp.grad, expected)
    # Same with old_logp passed explicitly as logp.detach().
    logp2 = logp.detach().clone().requires_grad_(True)
    _, metrics2 = grpo_loss(logp2, logp2.detach(), None, advantages, mask,
                            beta=0.0, eps_low=0.2, eps_high=0.2)
    assert metrics2["ratio_mean"].item() == pytest.approx(1.0)


# --- clipping -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("log_ratio", "adv", "objective", "low", "high"),
    [
        (math.log(1.5), 1.0, 1.28, False, True),  # above 1 + ε_high, Â > 0: clipped
        (math.log(1.5), -1.0, -1.5, False, False),  # above, Â < 0: the unclipped term is smaller
        (math.log(0.5), -1.0, -0.8, True, False),  # below 1 - ε_low, Â < 0: clipped
        (math.log(0.5), 1.0, 0.5, False, False),  # below, Â > 0: unclipped
        (math.log(1.1), 1.0, 1.1, False, False),  # inside the band
    ],
)
def test_clipping_acts_outside_the_band_with_the_sign_of_the_advantage(log_ratio, adv, objective, low, high):
    logp = torch.tensor([[log_ratio]], requires_grad=True)
    old = torch.zeros(1, 1)
    obj, clipped_low, clipped_high = clipped_surrogate(logp, old, torch.tensor([adv]), 0.2, 0.28)
    assert obj.item() == pytest.approx(objective)
    assert (clipped_low.item(), clipped_high.item()) == (low, high)
    obj.sum().backward()
    assert (logp.grad.item() == 0.0) == (low or high)  # a clipped token has no gradient


# --- KL estimators ------------------------------------------------------------------------------
def test_kl_estimators():
    torch.manual_seed(0)
    logp, ref = torch.randn(4, 7) * 3, torch.randn(4, 7) * 3
    k3 = kl_penalty(logp, ref, "k3")
    assert (k3 >= 0).all()
    assert (kl_penalty(logp, logp, "k3") == 0).all()
    d = 0.5  # ref - logp
    one = lambda estimator: kl_penalty(torch.tensor([[0.0]]), torch.tensor([[d]]), estimator).item()
    assert one("k3") == pytest.approx(math.exp(d) - d - 1)
    assert one("k1") == pytest.approx(-d)
    assert one("k2") == pytest.approx(d * d / 2)
    with pytest.raises(ValueError):
        kl_penalty(logp, ref, "k4")


# --- advantages ---------------------------------------------------------------------------------
def test_advantages_sum_to_zero_per_group_and_use_the_sample_std():
    torch.manual_seed(1)
    rewards = torch.rand(5 * 8)
    adv = group_advantages(rewards, 8)
    torch.testing.assert_close(adv.view(5, 8).sum(dim=1), torch.zeros(5), atol=1e-5, rtol=0)
    assert torch.equal(group_advantages(rewards.view(5, 8), 8), adv)  # [B, G] == [B*G]
    # G = 2, rewards 1, 0: sample std = sqrt(0.5); the population std would give ±1.
    pair = group_advantages(torch.tensor([1.0, 0.0]), 2)
    torch.testing.assert_close(pair, torch.tensor([0.5, -0.5]) / (math.sqrt(0.5) + 1e-4))
    torch.testing.assert_close(group_advantages(torch.tensor([1.0, 0.0]), 2, scale="none"),
                               torch.tensor([0.5, -0.5]))


def test_zero_variance_groups_give_exactly_zero_advantages():
    rewards = torch.tensor([0.1, 0.1, 0.1, 1.0, 0.0, 1.0, 2.0, 2.0, 2.0], dtype=torch.float64)
    assert zero_variance_groups(rewards, 3).tolist() == [True, False, True]
    adv = group_advantages(rewards, 3)
    assert adv[:3].tolist() == [0.0, 0.0, 0.0] and adv[6:].tolist() == [0.0, 0.0, 0.0]
    assert adv[3:6].abs().sum() > 0
    assert group_advantages(torch.tensor([1.0, 0.0]), 1).tolist() == [0.0, 0.0]  # G = 1: no signal


def test_advantage_layout_errors():
    with pytest.raises(ValueError):
        group_advantages(torch.zeros(7), 3)
    with pytest.raises(ValueError):
        group_advantages(torch.zeros(2, 4), 3)
    with pytest.raises(ValueError):
        group_advantages(torch.zeros(6), 3, scale="mad")
