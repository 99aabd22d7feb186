import json
import os
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


def _refused(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        convert_checkpoint.main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_supernet_needs_a_config_and_enough_width(tmp_path, capsys):
    torch.save(_supernet_state_dict(), tmp_path / "supernet")
    message = _refused([str(tmp_path / "supernet"), "-o", str(tmp_path / "out.pt")], capsys)
    assert "argument --net-config: " in message and "supernet checkpoint" in message
    assert not (tmp_path / "out.pt").exists()
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


@pytest.mark.parametrize("which", ["checkpoint", "net_config", "hardlink"])
def test_output_onto_an_input_is_refused(tmp_path, capsys, which):
    state = {k: v for k, v in list(models.MinkUNet(cr=0.5).state_dict().items())[:3]}
    torch.save({"model": state}, tmp_path / "init")
    config = tmp_path / "net.config"
    config.write_text("{}")
    argv = [str(tmp_path / "init"), "--net-config", str(config)]
    target = {"checkpoint": tmp_path / "init", "net_config": config, "hardlink": tmp_path / "alias.pt"}[which]
    if which == "hardlink":
        os.link(tmp_path / "init", target)
    before = {p: p.read_bytes() for p in (tmp_path / "init", config)}
    message = _refused([*argv, "-o", str(target)], capsys)
    assert f"argument -o/--output: refusing to write {target}: it would overwrite the " in message
    assert all(p.read_bytes() == data for p, data in before.items())
    expected = ["init", "net.config", *(["alias.pt"] if which == "hardlink" else [])]
    assert sorted(os.listdir(tmp_path)) == sorted(expected)


def test_bad_paths_are_argparse_errors(tmp_path, capsys):
    torch.save({"model": {}}, tmp_path / "init")
    assert "argument checkpoint: " in _refused([str(tmp_path / "none"), "-o", str(tmp_path / "o.pt")], capsys)
    message = _refused([str(tmp_path / "init"), "-o", str(tmp_path)], capsys)
    assert f"argument -o/--output: {tmp_path} is a folder" in message
    (tmp_path / "corrupt").write_bytes(b"not a checkpoint")
    message = _refused([str(tmp_path / "corrupt"), "-o", str(tmp_path / "o.pt")], capsys)
    assert "argument checkpoint: cannot read checkpoint" in message
    state = models.MinkUNet(cr=0.5).state_dict()
    torch.save({"model": state}, tmp_path / "plain")
    argv = [str(tmp_path / "plain"), "--net-config", str(tmp_path / "init"), "-o", str(tmp_path / "o.pt")]
    message = _refused(argv, capsys)
    assert "is not a supernet checkpoint; drop --net-config" in message
    assert sorted(os.listdir(tmp_path)) == ["corrupt", "init", "plain"]


def test_bevfusion_converter_refuses_to_overwrite_its_input(tmp_path, capsys):
    from torchsparse.tools import convert_bevfusion_checkpoint

    checkpoint = tmp_path / "bevfusion-det.pth"
    torch.save({"state_dict": {}}, checkpoint)
    before = checkpoint.read_bytes()
    (tmp_path / "link.pth").symlink_to(checkpoint)
    for output in (checkpoint, tmp_path / "link.pth"):
        with pytest.raises(SystemExit) as exit_info:
            convert_bevfusion_checkpoint.main([str(checkpoint), "--trust", "-o", str(output)])
        assert exit_info.value.code == 2
        message = capsys.readouterr().err
        assert f"argument -o/--output: refusing to write {output}: it would overwrite the checkpoint" in message
    assert checkpoint.read_bytes() == before
