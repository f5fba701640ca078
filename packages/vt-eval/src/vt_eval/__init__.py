"""vt-eval: benchmark loaders, the paper's evaluation protocol, accuracy and grounding/caption
metrics of the model's own trace, resumable prediction files and reports (Step 5 fills this in)."""

__version__ = "0.1.0"
