import csv
import subprocess
import sys

from pointacc.cli import main


def test_run_sweep_explain_on_a_builtin(tmp_path, capsys):
    assert (
        main(["run", "-c", "pointacc_edge", "-t", "builtin:pointnet2_ssg", "-p", str(tmp_path / "run")]) == 0
    )
    assert (tmp_path / "run" / "summary.json").is_file() and (tmp_path / "run" / "layers.png").is_file()
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
    rows = list(csv.DictReader(open(tmp_path / "sweep.csv")))
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
