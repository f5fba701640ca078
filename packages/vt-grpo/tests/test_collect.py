"""Zero-variance skipping with adaptive oversampling (`vt_grpo.rollout.collect_groups`), with a fake
stream and fake rollouts: more prompts are drawn until the step holds its planned number of
informative groups, the cap is respected, the stream is consumed in order without gaps, and ranks run
the same rounds."""

from __future__ import annotations

import torch

from vt_grpo.rollout import Group, PromptItem, collect_groups
from vt_grpo.settings import GRPOSettings


class FakeStream:
    """Prompts "p0", "p1", ... in order; records every draw."""

    def __init__(self):
        self.next, self.draws = 0, []

    def draw(self, n):
        items = [PromptItem(prompt={}, record=None, key=f"p{self.next + i}") for i in range(n)]
        self.next += n
        self.draws.append(n)
        return items


def fake_rollout(informative_keys, G=4):
    """Groups whose rewards vary iff their key is in `informative_keys`."""

    def rollout(items):
        groups = []
        for item in items:
            rewards = torch.tensor([0.0, 1.0] * (G // 2)) if item.key in informative_keys else torch.zeros(G)
            groups.append(
                Group(
                    item=item,
                    sequences=[torch.ones(1, dtype=torch.long)] * G,
                    texts=[""] * G,
                    logprobs=None,
                    finished=[True] * G,
                    rewards=rewards,
                    scores=rewards[:, None],
                )
            )
        return groups

    return rollout


def settings(**kw):
    base = {"prompts_per_step": 4, "generations_per_prompt": 4, "micro_batch_per_device": 4}
    return GRPOSettings(**{**base, **kw})


def test_zero_variance_groups_are_skipped_and_more_prompts_drawn():
    stream = FakeStream()
    informative = {"p1", "p3", "p4", "p6", "p9", "p10"}
    out = collect_groups(stream.draw, fake_rollout(informative), settings(max_prompt_draws_per_step=16))
    # The planned number of informative groups, all informative, in stream order.
    assert [g.item.key for g in out.groups] == ["p1", "p3", "p4", "p6"]
    assert not any(g.zero_variance for g in out.groups)
    # Round 1: 4 prompts, 2 informative (rate 1/2) -> round 2 draws ceil(2 / 0.5) = 4 more: enough.
    assert stream.draws == [4, 4] and out.rounds == 2
    assert out.keys == [f"p{i}" for i in range(8)]  # every drawn prompt once, no gap
    assert (out.informative, out.zero_variance, out.skipped, out.filled, out.discarded) == (4, 4, 4, 0, 0)


def test_the_draw_cap_fills_the_step_with_zero_variance_groups():
    stream = FakeStream()
    out = collect_groups(stream.draw, fake_rollout({"p2"}), settings(max_prompt_draws_per_step=12))
    assert stream.next == 12 and sum(stream.draws) == 12  # never beyond the cap
    assert len(out.groups) == 4 and out.groups[0].item.key == "p2"
    assert (out.filled, out.skipped, out.informative) == (3, 8, 1)  # 11 zero-variance, 3 used as filler


def test_no_informative_group_doubles_the_round_until_the_cap():
    stream = FakeStream()
    out = collect_groups(stream.draw, fake_rollout(set()), settings(max_prompt_draws_per_step=16))
    assert stream.draws == [4, 8, 4] and out.filled == 4


def test_without_skipping_one_round_trains_every_group():
    stream = FakeStream()
    out = collect_groups(stream.draw, fake_rollout({"p0"}), settings(skip_zero_variance=False))
    assert stream.draws == [4] and [g.item.key for g in out.groups] == ["p0", "p1", "p2", "p3"]
    assert (out.zero_variance, out.skipped, out.filled) == (3, 0, 0)


def test_ranks_run_the_same_rounds():
    """A rank whose quota is already full keeps drawing while another rank is short (lockstep: under
    ZeRO-3 every rank must join every generation); its extra informative groups are discarded."""
    calls = []

    def sync(tensor, op):  # the other rank is always 2 groups short and found nothing
        calls.append(op)
        if op == "max":
            return torch.maximum(tensor, torch.tensor([2.0], dtype=tensor.dtype))
        return tensor + torch.tensor([0.0, float(tensor[1])], dtype=tensor.dtype)  # its draws, no informative

    stream = FakeStream()
    out = collect_groups(
        stream.draw,
        fake_rollout({f"p{i}" for i in range(100)}),
        settings(max_prompt_draws_per_step=8),
        sync=sync,
    )
    assert len(out.groups) == 4 and out.rounds == 2 and stream.next == 8
    assert out.discarded == 4 and calls == ["max", "sum", "max", "sum"]
