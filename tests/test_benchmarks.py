"""Smoke tests of the benchmark helpers and of the GPU dataflow comparison, run on the CPU.

The comparison of `benchmarks/ops/bench_convolution.py` (what `--device cuda` runs) is called on a 64-voxel crop of
the real scan for each layer type, with timing reduced to one call: every dataflow that `Choice.supports` runs here
(the Triton ones under TRITON_INTERPRET=1, which conftest sets without a GPU) must match the float64 evaluation.
"""

import importlib.util
import pathlib

import numpy as np
import pytest
import torch

from torchsparse import Choice
from torchsparse.testing.benchmark import (
    cpu_description,
    device_description,
    gflops,
    print_table,
    spconv_unavailable,
    tflops,
)

REPO = pathlib.Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / "ops" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_helpers(capsys):
    assert tflops(10**9, 1.0) == pytest.approx(2.0)
    assert gflops(10**9, 1.0) == pytest.approx(2000.0)
    assert device_description("cpu") == cpu_description()
    assert spconv_unavailable("cpu") in (None, "not importable")
    print_table(["a", "b"], [[1, 2.0]], device="cpu")
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"[{cpu_description()}]", "a  b   ", "1  2.00"]


@pytest.fixture(scope="module")
def conv_bench():
    bench = _load("bench_convolution")
    kitti = np.fromfile(bench.SCAN, dtype=np.float32).reshape(-1, 4)
    return bench, bench.crop(bench.quantize_scan(kitti, 0.05), 64)


@pytest.mark.parametrize("layer", ["subm3", "down k2s2", "up k2s2", "down k3s2p1"])
def test_convolution_comparison(monkeypatch, conv_bench, layer):
    bench, scene = conv_bench
    monkeypatch.setattr(bench, "median_ms", lambda fn, runs: (fn(), 1.0)[1])
    spec = next(s for s in bench.layers([16], strided_channels=16) if s["name"].startswith(layer))
    rows = bench.compare_layer(spec, scene, torch.device("cpu"), torch.float32, runs=5)
    names = [row[5] for row in rows]
    expected = [f"ts {df}" if df in ("fused", "gather_scatter") else f"ts {df} s{split}"
                for df, split in bench.CANDIDATES if Choice(df, split=split).supports(torch.float32, "cpu")]
    assert names[:2] == ["dense mm", "plain PyTorch"]
    assert names[2:2 + len(expected)] == expected
    assert len(scene) == 64 and rows[0][3] > 0  # pairs
    for row in rows[1:]:
        assert float(row[9]) < 1e-5, row  # relative error against float64
