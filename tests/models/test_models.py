import json
from pathlib import Path

import pytest
import torch

from torchsparse import SparseTensor, models
from torchsparse.testing.models import randomise_batchnorm, rounded_scan

REFERENCE = Path(__file__).resolve().parent / "reference"
DUMP = json.loads((REFERENCE / "spvnas_state_dict_keys.json").read_text())
EXAMPLE_CONFIG = json.loads((REFERENCE / "spvnas_example_net_config.json").read_text())


def _shapes(model):
    return {k: list(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("cr, params", [(0.5, 5_449_267), (0.64, 8_793_617), (1.0, 21_778_003)])
@pytest.mark.parametrize("cls", [models.MinkUNet, models.SPVCNN])
def test_keys_and_shapes_equal_the_release(cls, cr, params):
    model = cls(num_classes=19, cr=cr)
    reference = DUMP[f"{cls.__name__}_cr{cr}"]
    assert list(_shapes(model).items()) == list(reference["keys"].items())  # keys, shapes and order
    assert models.num_parameters(model) == reference["num_params"] == params


def test_spvnas_example_subnet_equals_the_determinized_release():
    model = models.SPVNAS(EXAMPLE_CONFIG)
    reference = DUMP["SPVNAS_determinized_example"]
    assert list(_shapes(model).items()) == list(reference["keys"].items())
    assert models.num_parameters(model) == reference["num_params"]


def test_spvnas_inferred_from_shapes_alone():
    shapes = DUMP["SPVNAS_determinized_example"]["keys"]
    state_dict = {k: torch.empty(v, device="meta") for k, v in shapes.items()}
    config = models.infer_spvnas_config(state_dict)
    for key, value in EXAMPLE_CONFIG.items():
        if value is not None and key not in ("pres", "vres"):
            assert config[key] == value, key
    assert _shapes(models.SPVNAS(config)) == shapes


def test_registry_has_the_ten_released_variants():
    names = models.list_models()
    released = [n for n in names if n.startswith("SemanticKITTI_val_")]
    assert len(released) == 10
    assert (
        "SemanticKITTI_val_MinkUNet@114GMACs" in released and "SemanticKITTI_val_SPVNAS@65GMACs" in released
    )
    assert models.num_parameters(models.get_model("SemanticKITTI_val_SPVCNN@47GMACs")) == 8_793_617
    with pytest.raises(ValueError, match="needs its architecture"):
        models.get_model("SemanticKITTI_val_SPVNAS@20GMACs")
    with pytest.raises(ValueError, match="unknown model"):
        models.get_model("SemanticKITTI_val_MinkUNet@1GMACs")
    with pytest.raises(ValueError, match="already registered"):
        models.register_model("MinkUNet", models.MinkUNet)


@pytest.mark.parametrize("name", ["SemanticKITTI_val_MinkUNet@29GMACs", "SemanticKITTI_val_SPVCNN@30GMACs"])
def test_save_and_reload_is_bitwise_identical_on_the_real_scan(tmp_path, name):
    torch.manual_seed(0)
    model = models.get_model(name).eval()
    randomise_batchnorm(model, scale=0.1, affine=False)
    x = rounded_scan()
    with torch.inference_mode():
        expected = model(x)
    torch.save({"model": model.state_dict()}, tmp_path / "init")
    reloaded = models.get_model(name, checkpoint=tmp_path / "init").eval()
    with torch.inference_mode():
        assert torch.equal(reloaded(x), expected)
    assert expected.shape == (94_625, 19) and bool(torch.isfinite(expected).all())


def test_spvnas_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = models.SPVNAS(EXAMPLE_CONFIG).eval()
    randomise_batchnorm(model, scale=0.1, affine=False)
    x = rounded_scan(20_000)
    with torch.inference_mode():
        expected = model(x)
    torch.save({"model": model.state_dict()}, tmp_path / "init")
    reloaded = models.get_model("SemanticKITTI_val_SPVNAS@65GMACs", checkpoint=tmp_path / "init").eval()
    with torch.inference_mode():
        assert torch.equal(reloaded(x), expected)


@pytest.mark.parametrize("cls", [models.MinkUNet, models.SPVCNN])
def test_output_follows_input_row_order(cls):
    torch.manual_seed(0)
    model = cls(num_classes=5, cr=0.25).eval()
    x = rounded_scan(6000)
    perm = torch.randperm(len(x))
    with torch.inference_mode():
        out = model(x)
        permuted = model(SparseTensor(x.feats[perm], x.coords[perm]))
    torch.testing.assert_close(permuted, out[perm], rtol=1e-4, atol=1e-5)


def test_spvcnn_points_sharing_a_voxel():
    # Several points per voxel: the point branch keeps one output row per point.
    torch.manual_seed(0)
    model = models.SPVCNN(num_classes=3, cr=0.25, pres=0.05, vres=0.1).eval()
    x = rounded_scan(3000)
    with torch.inference_mode():
        out = model(x)
    assert out.shape == (3000, 3) and bool(torch.isfinite(out).all())


def test_mismatched_checkpoint_lists_what_differs(tmp_path):
    small = models.MinkUNet(cr=0.5).state_dict()
    with pytest.raises(
        models.CheckpointMismatchError,
        match=r"(?s)mis-shaped keys.*stem.0.kernel: checkpoint \[27, 4, 16\] vs model \[27, 4, 32\]",
    ):
        models.load_checkpoint(models.MinkUNet(cr=1.0), small)
    partial = dict(small)
    partial.pop("classifier.0.bias")
    partial["extra.weight"] = torch.zeros(1)
    with pytest.raises(
        models.CheckpointMismatchError,
        match=r"(?s)1 missing keys:\s+classifier.0.bias.*1 unexpected keys:\s+extra.weight",
    ):
        models.load_checkpoint(models.MinkUNet(cr=0.5), partial)
    with pytest.raises(ValueError, match="not an SPVNAS subnet"):
        models.get_model("SemanticKITTI_val_SPVNAS@25GMACs", checkpoint=small)


def test_checkpoint_files(tmp_path):
    state = models.MinkUNet(cr=0.5).state_dict()
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "ddp.pt")
    models.load_checkpoint(models.MinkUNet(cr=0.5), tmp_path / "ddp.pt")
    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read checkpoint .*corrupt.pt"):
        models.get_model("MinkUNet", checkpoint=tmp_path / "corrupt.pt")
    with pytest.raises(ValueError, match="does not exist"):
        models.get_model("MinkUNet", checkpoint=tmp_path / "missing.pt")
    torch.save({"model": [1, 2]}, tmp_path / "list.pt")
    with pytest.raises(ValueError, match="does not hold a state dict"):
        models.read_state_dict(tmp_path / "list.pt")


def test_registry_lists_bevfusion_with_its_loader(tmp_path):
    from torchsparse.models.bevfusion import BEVFusion, native_state_dict

    assert {"bevfusion_det", "bevfusion_seg"} <= set(models.list_models())
    torch.manual_seed(0)
    model = models.get_model("bevfusion_det")
    assert type(model) is BEVFusion and model.task == "det"
    torch.save({"model": native_state_dict(model)}, tmp_path / "native.pth")  # our kernel layout
    reloaded = models.get_model("bevfusion_det", checkpoint=tmp_path / "native.pth")
    expected = model.state_dict()
    assert list(reloaded.state_dict()) == list(expected)
    assert all(torch.equal(v, expected[k]) for k, v in reloaded.state_dict().items())
    seg = models.get_model("bevfusion_seg")
    assert type(seg) is BEVFusion and seg.task == "seg"
    with pytest.raises(models.CheckpointMismatchError, match="missing"):
        models.get_model("bevfusion_seg", checkpoint={"decoder.x": torch.zeros(1)})
