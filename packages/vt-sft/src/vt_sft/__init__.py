"""vt-sft: supervised fine-tuning of a video LM as a Lightning module composed by Hydra configs
(the `vt-sft` app, DeepSpeed strategies, exact resume; Step 3 fills this in)."""

__version__ = "0.1.0"
