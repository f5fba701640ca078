"""vt-sft: supervised fine-tuning of a video LM (Qwen2.5-VL) as a Lightning module composed by Hydra
configs: `SFTModule` (module.py), `SFTDataModule` streaming WebDataset shards to every rank
(datamodule.py), the per-token loss normalised over the whole optimizer step (loss.py), the final
Hugging Face export (export.py) and the `vt-sft` app (cli.py). Shared training plumbing (strategies,
checkpoints, callbacks) lives in `vt_model.training`."""

__version__ = "0.1.0"
