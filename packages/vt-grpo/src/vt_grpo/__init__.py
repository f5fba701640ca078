"""vt-grpo: GRPO for video: reward registry, group advantages, clipped surrogate, KL, rollouts
and the Lightning module that composes them.

Pure pieces (tensors in, tensors out; shapes in comments):
- `vt_grpo.advantages`: group-relative advantages and zero-variance groups.
- `vt_grpo.loss`: clipped surrogate, KL estimators, aggregation variants, `grpo_loss`.
- `vt_grpo.rewards`: named reward functions, `load_reward` (name or "module:function"), `RewardSet`.
The answer scorer they share with the evaluator is `vt_data.scoring.score_answer`."""

__version__ = "0.1.0"
