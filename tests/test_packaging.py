import importlib
import importlib.util
import pathlib
import subprocess
import sys

import torchsparse


def test_models_and_datasets_are_namespaced():
    repo = pathlib.Path(__file__).resolve().parent.parent
    package = pathlib.Path(torchsparse.__file__).resolve().parent
    for name in ("models", "datasets", "tools", "assets"):
        module = importlib.import_module(f"torchsparse.{name}")
        assert module.__doc__
        # Editable install: the repository folder; regular install: inside the torchsparse package.
        folder = pathlib.Path(module.__file__).resolve().parent
        assert folder in (repo / name, package / name), folder
        top = sys.modules.get(name)
        assert top is None or repo not in pathlib.Path(getattr(top, "__file__", None) or "/").resolve().parents


def test_no_top_level_models_or_datasets_from_checkout():
    # A fresh interpreter started in the repository root must not find our folders as top-level packages.
    repo = pathlib.Path(__file__).resolve().parent.parent
    code = (
        "import importlib.util, pathlib, sys, torchsparse.models, torchsparse.datasets, torchsparse.tools\n"
        "import torchsparse.assets\n"
        f"repo = pathlib.Path({str(repo)!r})\n"
        "for name in ('models', 'datasets', 'tools', 'assets'):\n"
        "    spec = importlib.util.find_spec(name)\n"
        "    origin = pathlib.Path(spec.origin).resolve() if spec and spec.origin else None\n"
        "    assert origin is None or repo not in origin.parents, (name, origin)\n"
        "    assert name not in sys.modules, name\n"
    )
    subprocess.run([sys.executable, "-I", "-c", code], cwd="/", check=True)


def test_import_has_no_side_effects():
    code = "import os, torchsparse; import torch; assert not torch.cuda.is_initialized()"
    subprocess.run([sys.executable, "-c", code], check=True)
