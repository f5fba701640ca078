"""Training plumbing shared by vt-sft and vt-grpo: batch-size arithmetic, LR schedules, a CPU DeepSpeed
strategy, atomic checkpoints with exact resume, resumable step batches over the shard stream, callbacks
(throughput progress bar, step log) and Hydra-app helpers.

Lightning, DeepSpeed and Hydra are imported by the submodules that need them (never here), so
`import vt_model` and `import vt_model.training` stay cheap; install them with the `train` extra.
"""
