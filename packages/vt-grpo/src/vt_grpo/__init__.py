"""vt-grpo: GRPO for video: reward registry, group advantages, clipped surrogate, KL, rollouts
and the Lightning module that composes them (Step 4 fills this in)."""

__version__ = "0.1.0"
