"""vt-model: Qwen2.5-VL loading from a local path, the torch-only Qwen video preprocessing,
3D M-RoPE positions, prompt building, collation, LoRA and generation (Step 2 fills this in)."""

__version__ = "0.1.0"
