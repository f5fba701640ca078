"""vt-grpo: GRPO for video: reward registry, group advantages, clipped surrogate, KL, rollouts
and the Lightning module that composes them.

Pure pieces (tensors in, tensors out; shapes in comments):
- `vt_grpo.advantages`: group-relative advantages and zero-variance groups.
- `vt_grpo.loss`: clipped surrogate, KL estimators, aggregation variants, `grpo_loss`.
- `vt_grpo.rewards`: named reward functions, `load_reward` (name or "module:function"), `RewardSet`.
- `vt_grpo.settings`: `GRPOSettings`, the batch sizes (prompts per step, generations per prompt,
  micro-batch per device) and every algorithm knob, derived values checked.
- `vt_grpo.rollout`: G completions per prompt with the video encoded once, scoring, zero-variance
  skipping with adaptive oversampling, the rollout batch (identical inputs for rollout and loss).
The answer scorer they share with the evaluator is `vt_data.scoring.score_answer`.

Lightning and Hydra glue (imported only where used):
- `vt_grpo.module.GRPOModule`, `vt_grpo.datamodule.PromptDataModule`, `vt_grpo.callbacks`,
  and the `vt-grpo` app `vt_grpo.cli` (configs: conf/grpo.yaml); the HF export is
  `vt_model.training.export`, shared with vt-sft.
- `vt_grpo.policy`: the policy under the strategy: the reference policy (LoRA adapter disabled or a
  frozen copy) and the parameters gathered for generation under ZeRO-3.
"""

__version__ = "0.1.0"
