"""GRPOSettings: the three batch knobs, what they derive, and refusals that name the numbers."""

from __future__ import annotations

import pytest

from vt_grpo.settings import GRPOSettings


def test_derived_sizes():
    s = GRPOSettings(prompts_per_step=8, generations_per_prompt=8, micro_batch_per_device=4, world_size=2)
    assert (s.completions_per_step, s.prompts_per_rank, s.completions_per_rank, s.micro_batches_per_rank) == (
        64,
        4,
        32,
        8,
    )
    assert s.max_prompt_draws_per_step == 32 and s.draws_per_rank == 16  # default cap: 4 × prompts_per_step
    assert s.generation_chunk == 4 and s.uses_reference
    assert "64 completions/step" in s.describe()
    assert not GRPOSettings(beta=0.0).uses_reference


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompts_per_step": 6, "world_size": 4}, "prompts_per_step=6 is not divisible by world_size=4"),
        (
            {"prompts_per_step": 2, "generations_per_prompt": 3, "micro_batch_per_device": 4},
            "= 6 is not divisible by",
        ),
        ({"generations_per_prompt": 1}, "generations_per_prompt must be >= 2"),
        ({"max_prompt_draws_per_step": 4}, "smaller than prompts_per_step=8"),
        ({"micro_batch_per_device": 0}, "micro_batch_per_device must be a positive integer"),
        ({"aggregation": "mean"}, "aggregation must be one of"),
        ({"kl_estimator": "k4"}, "kl_estimator must be one of"),
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"eps_low": 1.0}, "eps_low must be < 1"),
        ({"span_temperature": 0.0}, "span_temperature must be > 0"),
        ({"guided_span_share": 1.5}, "guided_span_share must be in"),
        ({"guided_span_grid": 1}, "guided_span_grid must be >= 2"),
    ],
)
def test_refuses_inconsistent_settings(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        GRPOSettings(**kwargs)


def test_run_length_and_checkpoints_align_with_updates_per_batch():
    """μ optimizer steps per rollout batch: a checkpoint inside a rollout batch could not resume exactly."""
    from vt_grpo.cli import check_step_alignment

    check_step_alignment(100, 2, 50)
    check_step_alignment(7, 1, 3)
    with pytest.raises(ValueError, match="max_steps=7 is not a multiple of updates_per_batch=2"):
        check_step_alignment(7, 2, None)
    with pytest.raises(ValueError, match="every_n_steps=5 is not a multiple of updates_per_batch=2"):
        check_step_alignment(100, 2, 5)
