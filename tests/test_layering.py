"""Imports point one way: ops -> tensor / conv_output -> nn -> models; datasets beside models; tools on top.

Every first-party import statement of the repository (module level or inside a function, read from the source, not
executed) is checked against the layer it comes from. The rules, lowest layer first:

| layer | modules | may import (first-party) |
|---|---|---|
| ops | torchsparse._C, torchsparse.ops.* | ops |
| core | torchsparse (package), tensor, conv_output, settings, profiling, tuning, classes, utils.*, assets | ops, core |
| nn.functional | torchsparse.nn.functional.*, torchsparse.nn.cache | ops, core, nn.functional |
| nn | the rest of torchsparse.nn (modules, fusion, workload) | ops, core, nn.functional, nn |
| testing | torchsparse.testing.* | ops, core, nn.functional, nn, testing |
| models | models/ (torchsparse.models.*) | ops, core, nn.functional, nn, models |
| datasets | datasets/ (torchsparse.datasets.*) | ops, core, datasets |
| tools | tools/ (torchsparse.tools.*) | everything, pointacc; a tool imports no other tool, only the private helpers |
| benchmarks | benchmarks/ | everything but tools |
| pointacc | pointacc/ | pointacc only (no torch either) |

Core's names: `torchsparse/__init__.py` may import what the package exports (settings, tensor, tuning), never nn.
"""

import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
# Source folder -> the package name it is installed as (setup.py's package_dir).
FOLDERS = {
    "torchsparse": "torchsparse",
    "models": "torchsparse.models",
    "datasets": "torchsparse.datasets",
    "tools": "torchsparse.tools",
    "assets": "torchsparse.assets",
    "pointacc": "pointacc",
    "benchmarks": "benchmarks",
}
CORE = (
    "torchsparse",
    "torchsparse.tensor",
    "torchsparse.conv_output",
    "torchsparse.settings",
    "torchsparse.profiling",
    "torchsparse.tuning",
    "torchsparse.classes",
    "torchsparse.utils",
    "torchsparse.assets",
)
ALLOWED = {
    "ops": {"ops"},
    "core": {"ops", "core"},
    "nn.functional": {"ops", "core", "nn.functional"},
    "nn": {"ops", "core", "nn.functional", "nn"},
    "testing": {"ops", "core", "nn.functional", "nn", "testing"},
    "models": {"ops", "core", "nn.functional", "nn", "models"},
    "datasets": {"ops", "core", "datasets"},
    "tools": {"ops", "core", "nn.functional", "nn", "testing", "models", "datasets", "tools", "pointacc"},
    "benchmarks": {"ops", "core", "nn.functional", "nn", "testing", "models", "datasets", "pointacc"},
    "pointacc": {"pointacc"},
}
FIRST_PARTY = ("torchsparse", "pointacc", "models", "datasets", "tools", "benchmarks")


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def layer_of(module: str) -> str:
    """The layer of a first-party module name (as installed, e.g. torchsparse.models.zoo)."""
    if _within(module, "pointacc"):
        return "pointacc"
    if _within(module, "benchmarks"):
        return "benchmarks"
    if _within(module, "torchsparse._C") or _within(module, "torchsparse.ops"):
        return "ops"
    for name in ("models", "datasets", "tools", "testing"):
        if _within(module, f"torchsparse.{name}"):
            return name
    if _within(module, "torchsparse.nn.functional") or _within(module, "torchsparse.nn.cache"):
        return "nn.functional"
    if _within(module, "torchsparse.nn"):
        return "nn"
    if module in CORE or any(_within(module, c) for c in CORE[1:]):
        return "core"
    raise AssertionError(f"{module} belongs to no layer; add it to tests/test_layering.py")


def _module_name(path: pathlib.Path) -> str:
    relative = path.relative_to(REPO).with_suffix("")
    parts = list(relative.parts)
    parts[0] = FOLDERS[parts[0]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: pathlib.Path, module: str) -> list[tuple[int, str]]:
    """(line, imported module) of every first-party import in the file, relative imports resolved."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module
            # `from torchsparse import nn` imports the submodule torchsparse.nn.
            found += [(node.lineno, f"{name}.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] in FIRST_PARTY]


def _third_party(path: pathlib.Path) -> set[str]:
    """Top-level names of the absolute imports in the file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names.add(node.module.split(".")[0])
    return names


def _sources() -> list[pathlib.Path]:
    files = []
    for folder in FOLDERS:
        files += sorted((REPO / folder).rglob("*.py"))
    return [f for f in files if "__pycache__" not in f.parts]


def _resolve(name: str, modules: set[str]) -> str:
    """The module an import names: the longest prefix of `name` that is a module of the repository
    (``from torchsparse.tensor import SparseTensor`` lists torchsparse.tensor.SparseTensor: torchsparse.tensor;
    ``from torchsparse.nn import functional``: torchsparse.nn.functional). Other names are returned as they are."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return name


def _violations() -> list[str]:
    problems = []
    modules = {_module_name(path) for path in _sources()} | {"torchsparse._C"}
    for path in _sources():
        module = _module_name(path)
        layer = layer_of(module)
        if layer == "pointacc" and "torch" in _third_party(path):
            problems.append(f"{path.relative_to(REPO)} ({layer}) imports torch")
        for line, imported in _imports(path, module):
            target = _resolve(imported, modules)
            where = f"{path.relative_to(REPO)}:{line} ({layer}) imports {target}"
            if target.split(".")[0] in ("models", "datasets", "tools"):
                problems.append(f"{where}: a top-level package of the checkout; use torchsparse.{target}")
                continue
            target_layer = layer_of(target)
            if target_layer not in ALLOWED[layer]:
                problems.append(f"{where}, a {target_layer} module")
            elif layer == "tools" and target_layer == "tools" and target not in (module, "torchsparse.tools"):
                if not target.rpartition(".")[2].startswith("_"):
                    problems.append(f"{where}: a tool imports only the private helpers, not another tool")
            elif module == "torchsparse" and target_layer != "core" and target != "torchsparse._C":
                problems.append(f"{where}: the package imports only what it exports")
    return problems


def test_imports_point_one_way():
    assert _violations() == []


def test_the_checker_sees_the_rules_broken():
    # A model importing a dataset, ops importing a tensor, a benchmark importing a tool, a tool importing a tool.
    for layer, target in [
        ("models", "datasets"),
        ("ops", "core"),
        ("benchmarks", "tools"),
        ("datasets", "models"),
        ("nn.functional", "nn"),
        ("pointacc", "core"),
    ]:
        assert target not in ALLOWED[layer]
    assert layer_of("torchsparse.models.bevfusion.head") == "models"
    assert layer_of("torchsparse.nn.modules.bev_pool") == "nn"
    assert layer_of("torchsparse.nn.cache") == "nn.functional"
    assert layer_of("torchsparse.ops.triton.implicit_gemm") == "ops"
    modules = {_module_name(path) for path in _sources()}
    assert _resolve("torchsparse.tensor.SparseTensor", modules) == "torchsparse.tensor"
    assert _resolve("torchsparse.nn.functional", modules) == "torchsparse.nn.functional"
    assert "torch" not in _third_party(REPO / "pointacc" / "simulate.py")
    assert "torch" in _third_party(REPO / "torchsparse" / "tensor.py")
    with pytest.raises(AssertionError, match="no layer"):
        layer_of("torchsparse.newthing")
