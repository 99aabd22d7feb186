import ast
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


def test_setup_lists_every_package():
    # setup.py lists its packages explicitly (no find_packages()); one left out is missing from a regular install
    # while an editable one still finds it, so compare the list with the folders that hold an __init__.py.
    repo = pathlib.Path(__file__).resolve().parent.parent
    call = next(
        node for node in ast.walk(ast.parse((repo / "setup.py").read_text()))
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup"
    )
    keywords = {keyword.arg: keyword.value for keyword in call.keywords}
    listed = ast.literal_eval(keywords["packages"])
    roots = {"torchsparse": "torchsparse", "pointacc": "pointacc", **ast.literal_eval(keywords["package_dir"])}
    found = set()
    for name, folder in roots.items():
        for init in (repo / folder).rglob("__init__.py"):
            found.add(".".join((name, *init.parent.relative_to(repo / folder).parts)))
    assert sorted(listed) == sorted(found)

