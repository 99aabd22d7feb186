"""torchsparse.utils.io: atomic writes keep the previous file on any error, InputFiles finds every alias."""

import json
import os
import stat

import numpy as np
import pytest

from torchsparse.utils.io import InputFiles, atomic_open, atomic_path, staged_files


class Boom(Exception):
    pass


@pytest.mark.parametrize("error", [Boom, KeyboardInterrupt])
def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path, error):
    target = tmp_path / "results.json"
    target.write_text('{"previous": true}')
    with pytest.raises(error), atomic_open(target) as handle:
        handle.write('{"new": ')
        handle.flush()
        raise error()
    assert target.read_text() == '{"previous": true}'
    assert sorted(os.listdir(tmp_path)) == ["results.json"]


def test_a_failed_write_of_a_new_file_leaves_nothing(tmp_path):
    with pytest.raises(Boom), atomic_path(tmp_path / "sub" / "scan.label") as tmp:
        np.arange(10, dtype=np.uint32).tofile(tmp)
        raise Boom()
    assert os.listdir(tmp_path / "sub") == []


def test_a_successful_write_replaces_the_file_and_keeps_its_mode(tmp_path):
    target = tmp_path / "scan.label"
    target.write_bytes(b"old")
    target.chmod(0o640)
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".label" and tmp.exists() and tmp != target
        assert target.read_bytes() == b"old"  # untouched until the block exits
        np.arange(4, dtype=np.uint32).tofile(tmp)
    assert np.fromfile(target, dtype=np.uint32).tolist() == [0, 1, 2, 3]
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert os.listdir(tmp_path) == ["scan.label"]


def test_new_files_get_the_default_mode_and_writers_that_need_the_suffix_work(tmp_path):
    # numpy.savez appends ".npz" to a name without it: the temporary name must keep the suffix.
    with atomic_path(tmp_path / "maps.npz") as tmp:
        np.savez(tmp, a=np.arange(3))
    assert os.listdir(tmp_path) == ["maps.npz"]
    assert np.load(tmp_path / "maps.npz")["a"].tolist() == [0, 1, 2]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "maps.npz").stat().st_mode) == 0o666 & ~umask


def test_a_folder_is_never_replaced(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(IsADirectoryError), atomic_path(tmp_path / "out"):
        pass
    assert os.listdir(tmp_path) == ["out"] and os.listdir(tmp_path / "out") == []


def test_a_symbolic_link_is_replaced_not_written_through(tmp_path):
    (tmp_path / "truth.label").write_bytes(b"truth")
    (tmp_path / "link.label").symlink_to(tmp_path / "truth.label")
    with atomic_open(tmp_path / "link.label", "wb") as handle:
        handle.write(b"new")
    assert (tmp_path / "truth.label").read_bytes() == b"truth"
    assert not (tmp_path / "link.label").is_symlink() and (tmp_path / "link.label").read_bytes() == b"new"


def test_atomic_open_refuses_appending():
    with pytest.raises(ValueError, match="mode"), atomic_open("unused", "a"):
        pass


def test_staged_files_land_one_by_one_and_the_staging_folder_goes(tmp_path):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "metrics_summary.json").write_text("old")
    (out / "keep.txt").write_text("keep")
    with staged_files(out) as staging:
        assert staging.parent == out and os.listdir(staging) == []
        (staging / "metrics_summary.json").write_text(json.dumps({"new": 1}))
        (staging / "plots").mkdir()
        (staging / "plots" / "curve.pdf").write_bytes(b"%PDF")
        assert (out / "metrics_summary.json").read_text() == "old"
    assert sorted(os.listdir(out)) == ["keep.txt", "metrics_summary.json", "plots"]
    assert json.loads((out / "metrics_summary.json").read_text()) == {"new": 1}
    assert (out / "plots" / "curve.pdf").read_bytes() == b"%PDF"


def test_staged_files_touch_nothing_when_the_writer_fails(tmp_path):
    (tmp_path / "trace.jsonl").write_text("old")
    with pytest.raises(Boom), staged_files(tmp_path) as staging:
        (staging / "trace.jsonl").write_text("partial")
        raise Boom()
    assert os.listdir(tmp_path) == ["trace.jsonl"] and (tmp_path / "trace.jsonl").read_text() == "old"


def test_input_files_find_every_name_of_an_input(tmp_path, monkeypatch):
    data = tmp_path / "d"
    data.mkdir()
    (data / "scan.label").write_bytes(b"truth")
    inputs = InputFiles()
    inputs.add("the ground-truth labels", data / "scan.label", None)
    inputs.add("the checkpoint", tmp_path / "not_yet.pt")
    assert len(inputs) == 2
    hit = ("the ground-truth labels", data / "scan.label")
    assert inputs.clash(data / "scan.label") == hit
    assert inputs.clash(tmp_path / "d" / ".." / "d" / "scan.label") == hit
    monkeypatch.chdir(data)
    assert inputs.clash("scan.label") == hit
    (tmp_path / "symlink.label").symlink_to(data / "scan.label")
    assert inputs.clash(tmp_path / "symlink.label") == hit
    (tmp_path / "linked").symlink_to(data, target_is_directory=True)
    assert inputs.clash(tmp_path / "linked" / "scan.label") == hit
    os.link(data / "scan.label", tmp_path / "hardlink.label")
    assert inputs.clash(tmp_path / "hardlink.label") == hit
    # An input that does not exist yet still counts by its path: nothing may be written there and read back.
    assert inputs.clash(tmp_path / "not_yet.pt") == ("the checkpoint", tmp_path / "not_yet.pt")
    (tmp_path / "other.label").write_bytes(b"truth")  # equal bytes, another file
    assert inputs.clash(tmp_path / "other.label") is None
    assert inputs.clash(tmp_path / "new.label") is None
