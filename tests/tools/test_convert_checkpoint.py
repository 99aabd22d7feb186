import json
from pathlib import Path

import pytest
import torch

import torchsparse.models as models
from torchsparse.tools import convert_checkpoint

REFERENCE = Path(__file__).resolve().parents[1] / "models" / "reference"


def _supernet_state_dict():
    shapes = json.loads((REFERENCE / "spvnas_state_dict_keys.json").read_text())["SPVNAS_supernet"]["keys"]
    g = torch.Generator().manual_seed(0)
    return {k: torch.randn(v, generator=g) if v else torch.tensor(7) for k, v in shapes.items()}


def test_supernet_is_determinized_for_the_example_subnet(tmp_path):
    supernet = _supernet_state_dict()
    torch.save({"model": {f"module.{k}": v for k, v in supernet.items()}}, tmp_path / "supernet")
    config_path = REFERENCE / "spvnas_example_net_config.json"
    convert_checkpoint.main(
        [str(tmp_path / "supernet"), "--net-config", str(config_path), "-o", str(tmp_path / "subnet.pt")]
    )
    model = models.get_model("SemanticKITTI_val_SPVNAS@65GMACs", checkpoint=tmp_path / "subnet.pt")
    assert isinstance(model, models.SPVNAS)
    state = model.state_dict()
    # The subnet holds the supernet's first channels.
    key = "downsample.1.feature.1.net.0.net.conv.kernel"  # [27, 32, 80] of [27, 96, 96]
    torch.testing.assert_close(
        state[key], supernet["downsample.1.feature.layers.1.net.layers.0.net.conv.kernel"][:, :32, :80]
    )
    torch.testing.assert_close(
        state["point_transforms.1.net.bn.weight"], supernet["point_transforms.1.net.bn.bn.weight"][:128]
    )
    torch.testing.assert_close(state["classifier.linear.weight"], supernet["classifier.linear.weight"])


def test_supernet_needs_a_config_and_enough_width(tmp_path):
    torch.save(_supernet_state_dict(), tmp_path / "supernet")
    with pytest.raises(SystemExit, match="--net-config"):
        convert_checkpoint.main([str(tmp_path / "supernet"), "-o", str(tmp_path / "out.pt")])
    config = json.loads((REFERENCE / "spvnas_example_net_config.json").read_text())
    config["downsample.3.transition"] = 512  # wider than the supernet's 192
    config["downsample.3.feature.layers.0.net.layers.0"] = 512
    with pytest.raises(ValueError, match="cannot hold subnet shape"):
        convert_checkpoint.determinize(_supernet_state_dict(), config)


def test_plain_checkpoints_pass_through(tmp_path):
    state = models.MinkUNet(cr=0.5).state_dict()
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "ddp.pt")
    convert_checkpoint.main([str(tmp_path / "ddp.pt"), "-o", str(tmp_path / "out.pt")])
    loaded = torch.load(tmp_path / "out.pt", weights_only=True)["model"]
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
