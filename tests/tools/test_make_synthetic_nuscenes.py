"""tools/make_synthetic_nuscenes.py's command line: bad counts are argparse errors, a real set is never overwritten."""

import json
import os

import pytest

from torchsparse.tools import make_synthetic_nuscenes as synthetic


def _refused(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        synthetic.main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--scenes", "0", "must be a positive integer, got 0"),
        ("--scenes", "11", "at most 10 with the official scene names, got 11"),
        ("--samples", "0", "must be a positive integer, got 0"),
        ("--sweeps", "10", "must be an integer from 0 to 9, got 10"),
        ("--seed", "-1", "must be an integer >= 0, got -1"),
    ],
)
def test_bad_counts_are_argparse_errors(tmp_path, capsys, option, value, message):
    assert f"argument {option}: {message}" in _refused(["-o", str(tmp_path / "root"), option, value], capsys)
    assert not (tmp_path / "root").exists()


def test_a_real_release_is_never_overwritten(tmp_path, capsys):
    tables = tmp_path / "nuscenes" / "v1.0-mini"
    tables.mkdir(parents=True)
    (tables / "log.json").write_text(json.dumps([{"token": "t", "vehicle": "n015", "logfile": "real"}]))
    (tables / "scene.json").write_text("[]")
    message = _refused(["-o", str(tmp_path / "nuscenes")], capsys)
    assert f"argument -o/--output: {tables} holds tables that this tool did not write" in message
    assert sorted(os.listdir(tables)) == ["log.json", "scene.json"] and (tables / "scene.json").read_text() == "[]"
    assert sorted(os.listdir(tmp_path / "nuscenes")) == ["v1.0-mini"]


def test_a_synthetic_set_is_rewritten_in_place_with_the_same_bytes(tmp_path, capsys):
    argv = ["-o", str(tmp_path / "root"), "--scenes", "1", "--samples", "1", "--sweeps", "0"]
    assert synthetic.main(argv) == 0
    first = {p: p.read_bytes() for p in sorted((tmp_path / "root").rglob("*")) if p.is_file()}
    assert synthetic.main(argv) == 0
    assert {p: p.read_bytes() for p in sorted((tmp_path / "root").rglob("*")) if p.is_file()} == first
    assert not [p for p in first if p.name.startswith(".")]  # no temporary files left behind


def test_names_version_and_lidar_only_options(tmp_path, capsys):
    argv = ["-o", str(tmp_path / "root"), "--version", "v1.0-synth", "--scene-names", "a-1", "b-2", "c-3",
            "--split-names", "tr", "va", "--lidar-only", "--samples", "1", "--sweeps", "0"]
    assert synthetic.main(argv) == 0
    assert "wrote 3 scenes x 1 samples" in capsys.readouterr().out
    tables = tmp_path / "root" / "v1.0-synth"
    assert json.loads((tables / "splits.json").read_text()) == {"tr": ["a-1", "b-2"], "va": ["c-3"]}
    assert [s["channel"] for s in json.loads((tables / "sensor.json").read_text())] == ["LIDAR_TOP"]
    assert synthetic.main(argv) == 0  # its own set is rewritten in place
    for bad, message in [
        (["--scenes", "2", "--scene-names", "a"], "argument --scene-names: 1 names for --scenes 2"),
        (["--scene-names", "a", "a"], "argument --scene-names: the names must be distinct"),
        (["--scene-names", "a/b"], "argument --scene-names: the name 'a/b' is not a usable name"),
        (["--version", ""], "argument --version: the name '' is not a usable name"),
        (["--split-names", "x", "x"], "argument --split-names: the two names must differ"),
    ]:
        assert message in _refused(["-o", str(tmp_path / "other"), *bad], capsys)
    assert not (tmp_path / "other").exists()
