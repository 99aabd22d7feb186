import csv
import os
import subprocess
import sys

from pointacc.cli import main


def test_run_sweep_explain_on_a_builtin(tmp_path, capsys):
    assert (
        main(["run", "-c", "pointacc_edge", "-t", "builtin:pointnet2_ssg", "-p", str(tmp_path / "run")]) == 0
    )
    folder = tmp_path / "run" / "pointacc_edge"  # -p / run_name /, as SCALE-Sim
    assert (folder / "summary.json").is_file() and (folder / "layers.png").is_file()
    assert (
        main(
            [
                "sweep",
                "-c",
                "pointacc",
                "-t",
                "builtin:pointnet",
                "--set",
                "array.array_height=16,64",
                "--set",
                "memory.fusion=true,false",
                "-o",
                str(tmp_path / "sweep.csv"),
            ]
        )
        == 0
    )
    with open(tmp_path / "sweep.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4
    cycles = {(r["array.array_height"], r["memory.fusion"]): int(r["total_cycles"]) for r in rows}
    assert cycles[("64", "true")] < cycles[("16", "true")]
    assert main(["explain", "-c", "pointacc", "-t", "builtin:pointnet", "--layer", "mlp2.0"]) == 0
    out = capsys.readouterr().out
    assert "matrix:" in out and "utilisation" in out


def test_errors_name_the_problem(tmp_path, capsys):
    (tmp_path / "bad.cfg").write_text("[memory]\nways = many\n")
    assert main(["run", "-c", str(tmp_path / "bad.cfg"), "-t", "builtin:pointnet", "-p", str(tmp_path)]) == 2
    assert "[memory] ways: expected int, got 'many'" in capsys.readouterr().err
    assert main(["explain", "-c", "pointacc", "-t", "builtin:pointnet", "--layer", "nope"]) == 2
    assert "no layer 'nope'" in capsys.readouterr().err
    (tmp_path / "gemm.txt").write_text("x")
    assert (
        main(["run", "-c", "pointacc", "-t", str(tmp_path / "gemm.txt"), "-i", "gemm", "-p", str(tmp_path)])
        == 2
    )


def test_module_and_console_script():
    for command in ([sys.executable, "-m", "pointacc", "--help"], ["pointacc", "--help"]):
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        assert "run" in result.stdout and "sweep" in result.stdout and "explain" in result.stdout


def test_pointacc_imports_no_torch():
    code = (
        "import sys, pointacc.cli, pointacc.simulate, pointacc.report, pointacc.networks, pointacc.testing\n"
        "assert 'torch' not in sys.modules and 'torchsparse' not in sys.modules, 'pointacc imported torch'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _pointacc(*argv, cwd):
    """The console script in a child limited to 4 GiB of address space: a regression that allocates without
    bound fails with a MemoryError (a traceback) instead of taking the machine down."""
    import resource

    def limit():
        # AddressSanitizer (the sanitizer job preloads it) reserves terabytes of shadow address space up front, so
        # an address-space limit would abort every child there; the ASan build's own allocator bounds apply instead.
        if "libasan" not in os.environ.get("LD_PRELOAD", ""):
            resource.setrlimit(resource.RLIMIT_AS, (4 * 2**30, 4 * 2**30))

    return subprocess.run(
        ["pointacc", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        preexec_fn=limit,
        check=False,
    )


def _reproducers(tmp_path):
    """The adversarial user's inputs: name -> (argv, message)."""
    import json

    import numpy as np

    from pointacc.workload import write_workload

    (tmp_path / "kmap").mkdir()
    kmap = {
        "op": "kmap",
        "name": "k",
        "map": "m",
        "n_in": 10,
        "n_out": 10,
        "kernel_size": 2000,
        "stride": 1,
        "submanifold": True,
    }
    (tmp_path / "kmap" / "trace.jsonl").write_text(json.dumps(kmap) + "\n")
    (tmp_path / "nan.cfg").write_text("[memory]\ncache_kb = nan\n")
    (tmp_path / "inf.cfg").write_text("[dram]\nbandwidth_gbps = inf\n")
    conv = {
        "op": "sparse_conv",
        "name": "c",
        "map": "m",
        "n_in": 3,
        "n_out": 3,
        "c_in": 4,
        "c_out": 8,
        "kernel_volume": 27,
    }
    sizes = np.array([0] * 13 + [3] + [0] * 13)
    write_workload(
        tmp_path / "rows", [conv], {"m.in": np.array([0, 1, 7]), "m.out": np.arange(3), "m.sizes": sizes}
    )
    write_workload(
        tmp_path / "volume", [conv], {"m.in": np.arange(3), "m.out": np.arange(3), "m.sizes": np.array([3])}
    )
    write_workload(tmp_path / "corrupt", [conv])
    (tmp_path / "corrupt" / "maps.npz").write_bytes(b"PK\x03\x04" + bytes(range(256)) * 4)
    run = ["run", "-c", "pointacc", "-p", "out", "-t"]
    return {
        "kernel_size 2000": (
            [*run, "kmap"],
            "kmap/trace.jsonl:1: kmap record 'k': kernel_size 2000 gives 8000000000 offsets",
        ),
        "NaN in a config": (
            ["run", "-c", "nan.cfg", "-t", "builtin:pointnet", "-p", "out"],
            "nan.cfg: [memory] cache_kb must be a finite number, got nan",
        ),
        "inf in a config": (
            ["sweep", "-c", "inf.cfg", "-t", "builtin:pointnet", "--set", "ways=2", "-o", "s.csv"],
            "inf.cfg: [dram] bandwidth_gbps must be a finite number, got inf",
        ),
        "corrupt maps.npz": ([*run, "corrupt"], "corrupt/maps.npz: not a readable .npz archive"),
        "rows beyond n_in": (
            ["explain", "-c", "pointacc", "--layer", "c", "-t", "rows"],
            "rows/trace.jsonl:1: sparse_conv 'c': map 'm' has input row 7, not below n_in = 3",
        ),
        "kernel_volume != len(sizes)": (
            [*run, "volume"],
            "volume/trace.jsonl:1: sparse_conv 'c': array 'm.sizes' has 1 offsets, kernel_volume is 27",
        ),
    }


def test_reproducers_end_with_an_error_message_not_a_traceback(tmp_path):
    for name, (argv, message) in _reproducers(tmp_path).items():
        result = _pointacc(*argv, cwd=tmp_path)
        assert result.returncode == 2, (name, result.stderr)
        assert result.stderr == f"pointacc: error: {message}\n" or (
            result.stderr.startswith(f"pointacc: error: {message}") and result.stderr.count("\n") == 1
        ), (name, result.stderr)
    assert not (tmp_path / "out").exists() and not (tmp_path / "s.csv").exists()


def test_output_paths_that_cannot_be_written_are_errors(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert (
        main(["run", "-c", "pointacc", "-t", "builtin:pointnet", "-p", str(tmp_path / "file"), "--no-chart"])
        == 2
    )
    assert (
        f"pointacc: error: {tmp_path / 'file' / 'pointacc'}: cannot write the reports (Not a directory)"
        in capsys.readouterr().err
    )
    sweep = ["sweep", "-c", "pointacc", "-t", "builtin:pointnet", "--set", "ways=2"]
    assert main([*sweep, "-o", str(tmp_path / "file" / "s.csv")]) == 2
    assert "cannot write the sweep (File exists)" in capsys.readouterr().err
    config = tmp_path / "mine.cfg"
    config.write_text("[memory]\nways = 4\n")
    assert (
        main(["sweep", "-c", str(config), "-t", "builtin:pointnet", "--set", "ways=2", "-o", str(config)])
        == 2
    )
    assert (
        "is an input of this sweep" in capsys.readouterr().err
        and config.read_text() == "[memory]\nways = 4\n"
    )


def test_sweep_points_are_checked_before_simulating(tmp_path, capsys):
    base = ["sweep", "-c", "pointacc", "-t", "builtin:pointnet", "-o", str(tmp_path / "s.csv")]
    assert main([*base, "--set", "ways=2,nan"]) == 2
    assert (
        "pointacc: error: --set ways=nan: [memory] ways: expected int, got 'nan'" in capsys.readouterr().err
    )
    assert (
        main([*base, "--set", "ways=" + ",".join(["2"] * 101), "--set", "cache_kb=" + ",".join(["8"] * 100)])
        == 2
    )
    assert "10100 configurations, more than the 10000" in capsys.readouterr().err
    assert main([*base, "--set", "ways=2", "--set", "ways=4"]) == 2
    assert "--set: ways is set twice" in capsys.readouterr().err
    assert main(["run", "-c", "pointacc", "-t", "builtin:nope", "-p", str(tmp_path)]) == 2
    assert "pointacc: error: builtin:nope: unknown built-in network 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "s.csv").exists()
