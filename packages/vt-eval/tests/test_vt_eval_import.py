"""The vt_eval package imports without a Hydra config or any sibling other than its declared ones."""

import importlib


def test_vt_eval_imports_and_names_its_version():
    module = importlib.import_module("vt_eval")
    assert module.__version__ == "0.1.0"
    assert module.__doc__ and "vt-eval" in module.__doc__
