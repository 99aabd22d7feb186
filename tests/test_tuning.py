import json

import pytest
import torch

import torchsparse
import torchsparse.nn as spnn
from torchsparse import Choice, ConvConfig
from torchsparse.nn.functional import conv as conv_functional
from torchsparse.profiling import named_ms, region, timed
from torchsparse.settings import CONV3D, choose
from torchsparse.testing import random_sparse_tensor
from torchsparse.tuning import device_name, model_key


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        spnn.Conv3d(4, 8, 3), spnn.ReLU(), spnn.Conv3d(8, 8, 3), spnn.Conv3d(8, 16, 2, stride=2),
        spnn.Conv3d(16, 8, 2, stride=2, transposed=True),
    ).double().eval()


def _input():
    return random_sparse_tensor(400, 4, extent=(12, 12, 12), batch_size=2, dtype=torch.float64)


def test_config_selects_and_restores():
    x = random_sparse_tensor(50, 4, dtype=torch.float16)
    conv = spnn.Conv3d(4, 4, 3).half()
    before = torchsparse.settings.current_config()
    with torchsparse.config(dataflow="fused") as cfg:
        assert cfg.dataflow == "fused"
        assert conv(x).feats.dtype == torch.float16  # computed in float32, rounded once
        meta = torch.empty((0, 4), device="meta")
        with pytest.raises(TypeError, match="dataflow 'fused' does not run"):
            conv_functional._choice(cfg, meta, meta.new_empty((27, 4, 4)), "layer")
        with torchsparse.config(dataflow="gather_scatter"):
            assert conv(x).feats.dtype == torch.float16
        assert torchsparse.settings.current_config().dataflow == "fused"
    assert torchsparse.settings.current_config() == before == ConvConfig(measure=False)  # tests/conftest.py


def test_config_validation():
    with pytest.raises(ValueError, match="dataflow"):
        ConvConfig(dataflow="magic")
    with pytest.raises(ValueError, match="tile"):
        Choice("fused", -1)
    with pytest.raises(TypeError):
        ConvConfig(unknown=1)


def test_tune_picks_per_group_and_persists(tmp_path):
    net, x = _net(), _input()
    path = tmp_path / "plan.json"
    candidates = (Choice("gather_scatter"), Choice("fused", 64), Choice("fused", 1024))
    plan = torchsparse.tune(net, (x,), path=path, candidates=candidates, repeats=2)
    assert len(plan) == 4 and all(choice in candidates for choice in plan.values())
    assert any(key.startswith("transposed 16->8") for key in plan)
    stored = json.loads(path.read_text())
    assert list(stored) == [model_key(net, (x,))]

    # The file answers without running the model again.
    class Forbidden(torch.nn.Module):
        def forward(self, *args):
            raise AssertionError("tuning ran although a plan was stored")

        def __repr__(self):
            return repr(net)

    assert torchsparse.tune(Forbidden(), (x,), path=path, candidates=candidates) == plan

    # Applying the plan uses its choices and gives the same result.
    with torch.inference_mode():
        reference = net(x).feats
        with torchsparse.config(plan=plan), timed() as times:
            tuned = net(x).feats
    assert {key[1]: key[2] for key in times if key[0] == CONV3D} == plan
    assert torch.allclose(tuned, reference, atol=1e-12)


def test_choose_keeps_the_default_within_noise():
    fast, slow = Choice("gather_scatter"), Choice("fused", 512)
    assert choose({fast: [1.0, 1.1, 1.2], slow: [2.0, 2.1, 2.2]}, slow) == fast
    assert choose({fast: [1.0, 1.5, 2.0], slow: [1.2, 1.6, 2.1]}, slow) == slow  # 0.1 faster, spread ~1
    assert choose({fast: [1.0], slow: [1.01]}, slow) == fast
    assert choose({fast: [1.0]}, slow) == fast


def test_regions_time_named_blocks():
    with timed() as times:
        with region("outer"), region(("inner", 1)):
            pass
        with region("outer"):
            pass
    assert len(times["outer"]) == 2 and len(times[("inner", 1)]) == 1
    assert list(named_ms(times)) == ["outer"]
    with region("nobody listens"):  # without a collector a region only opens a profiler range
        pass


def _conv_layer(points):
    x = random_sparse_tensor(points, 16, extent=(24, 24, 24), batch_size=2, seed=3)
    return spnn.Conv3d(16, 16, 3).eval(), x


def test_auto_measures_once_per_layer(monkeypatch):
    monkeypatch.setattr(conv_functional, "MEASURE_ABOVE_SECONDS", 0.0)
    conv, x = _conv_layer(3000)
    with torch.inference_mode(), torchsparse.config(measure=True):
        reference = conv(x).feats  # measures and remembers
        assert len(conv.choices) == 1
        (memo, choice), = conv.choices.items()
        assert memo[1:] == (torch.float32, x.feats.device)
        assert choice.dataflow in ("fused", "gather_scatter")
        with timed() as times:
            again = conv(x).feats
    assert [key[2] for key in times if key[0] == CONV3D] == [choice]  # the memo: one run, no measuring
    assert torch.allclose(again, reference, atol=1e-5)


def test_auto_does_not_measure_when_told_or_training(monkeypatch):
    monkeypatch.setattr(conv_functional, "MEASURE_ABOVE_SECONDS", 0.0)
    conv, x = _conv_layer(500)
    with torchsparse.config(measure=True):
        conv(x).feats.sum().backward()  # autograd: the static choice, no repeated forward
    with torch.inference_mode(), torchsparse.config(measure=False):
        conv(x)
    with torch.inference_mode(), torchsparse.config(dataflow="gather_scatter", measure=True):
        conv(x)
    assert conv.choices == {}
    # A fast layer keeps the automatic choice without timing the others.
    monkeypatch.setattr(conv_functional, "MEASURE_ABOVE_SECONDS", 1e9)
    with torch.inference_mode(), torchsparse.config(measure=True), timed() as times:
        conv(x)
    assert list(conv.choices.values()) == [Choice("fused")] and len(times) == 1


def test_model_key_names_the_device():
    net, x = _net(), _input()
    assert device_name("cpu") and model_key(net, (x,)) != model_key(net, (x.half(),))


def test_default_tile():
    from torchsparse.settings import default_tile

    assert default_tile(100_000, 2) == 2048
    assert default_tile(9_000, 2) == 1024
    assert default_tile(10, 16) == 256


def test_tune_rejects_corrupt_file(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not a tuning file"):
        torchsparse.tune(_net(), (_input(),), path=path)


def test_choice_supports():
    fused = Choice("fused", 512)
    assert fused.supports(torch.float32, "cpu") and fused.supports(torch.float64, torch.device("cpu"))
    assert fused.supports(torch.float16, "cpu") and not fused.supports(torch.float32, "cuda")
    assert Choice("gather_scatter").supports(torch.float16, "cuda")
    for dataflow in ("implicit_gemm", "implicit_gemm_sorted"):
        choice = Choice(dataflow, split=2)
        assert choice.supports(torch.bfloat16, "cuda") == torchsparse.ops.HAS_TRITON
        assert not choice.supports(torch.int32, "cuda")
        interpreted = torchsparse.ops.HAS_TRITON and torchsparse.ops.triton.interpreted()
        assert choice.supports(torch.float32, "cpu") == interpreted
    with pytest.raises(ValueError, match="split"):
        Choice("implicit_gemm", split=5)
    with pytest.raises(ValueError, match="group_tolerance"):
        Choice("gather_scatter", group_tolerance=1.5)


def test_tune_skips_unsupported_candidates(monkeypatch):
    monkeypatch.setattr(Choice, "supports", lambda self, dtype, device: self.dataflow != "fused")
    net, x = _net().half(), _input().half()
    plan = torchsparse.tune(net, (x,), candidates=(Choice("fused", 256), Choice("gather_scatter")), repeats=1)
    assert len(plan) == 4 and set(plan.values()) == {Choice("gather_scatter")}


def test_tune_propagates_errors_of_the_model():
    class Broken(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = _net()

        def forward(self, x):
            return self.net(x).feats + "a bug in the user's model"

    with pytest.raises(TypeError, match="unsupported operand"):
        torchsparse.tune(Broken(), (_input(),), candidates=(Choice("fused", 256), Choice("gather_scatter")))


def test_auto_measures_a_layer_group_once_per_pass(monkeypatch):
    monkeypatch.setattr(conv_functional, "MEASURE_ABOVE_SECONDS", 0.0)
    measured = []
    measure = conv_functional._measure
    monkeypatch.setattr(conv_functional, "_measure", lambda *args: measured.append(1) or measure(*args))
    first, x = _conv_layer(1500)
    second = spnn.Conv3d(16, 16, 3).eval()
    with torch.inference_mode(), torchsparse.config(measure=True):
        second(first(x))  # one layer group: the second layer takes the first one's choice
        assert len(measured) == 1 and first.choices == second.choices and len(first.choices) == 1
        first(random_sparse_tensor(500, 16, seed=4))  # another pass: the layer's own memo, still no measuring
    assert len(measured) == 1
