"""The command line against mutated configs, traces and maps: every case ends with exit status 0, or 2 and a
one-line `pointacc: error:` on stderr; never a traceback, and never past a time limit."""

import contextlib
import functools
import io
import json
import pathlib
import signal
import tempfile
import traceback

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pointacc.cli import main
from pointacc.config import PRESETS, RANGES, SECTIONS
from pointacc.limits import MAX_CHANNELS, MAX_ROWS
from pointacc.testing import synthetic_trace
from pointacc.workload import TRACE

SECONDS_PER_CASE = 30
FUZZ = settings(
    max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
CONFIG_KEYS = {
    "architecture_presets": [
        "array_height",
        "array_width",
        "dataflow",
        "precision",
        "clock_ghz",
        "input_buffer_kb",
        "weight_buffer_kb",
        "output_buffer_kb",
        "ArrayHeight",
        "Bandwidth",
    ],
    "mapping_unit": ["sorter_width", "merger_width", "distance_units", "symmetric"],
    "memory": [
        "cache_kb",
        "line_points",
        "ways",
        "policy",
        "gather_order",
        "caching",
        "reconfigure",
        "fusion",
        "map_buffer_kb",
        "coord_buffer_kb",
    ],
    "dram": ["type", "bandwidth_gbps", "latency_cycles", "burst_bytes", "pj_per_bit"],
    "energy": ["table", "node_nm"],
    "run_presets": ["overlap", "fidelity", "grouped"],
}
WILD_TEXT = [
    "nan",
    "NaN",
    "inf",
    "-inf",
    "1e400",
    "-1",
    "0",
    "0.0",
    "1",
    "2",
    "0.5",
    "2.5",
    "64.0",
    "1e9",
    "4097",
    "65537",
    "1e-300",
    str(2**63),
    "9" * 5000,
    "abc",
    "",
    "true",
    "no",
    "none",
    "%",
    "%(x)s",
    "lru",
    "direct",
    "offset",
    "ws",
    "int8",
    "DDR4",
    "accelergy45",
    "analytic",
    "\u00e9\u00e9",
    "1_000",
    "0x10",
]
# Values at the edges of what the config accepts, e.g. [memory] cache_kb = 1048576.0 or clock_ghz = 0.001.
EDGES = {
    (ini, key): [str(low), str(high)]
    for ini, attribute in SECTIONS.items()
    for (section, key), (low, high) in RANGES.items()
    if section == attribute
}
TRACE_EDGES = [0, 1, 16, 4096, MAX_CHANNELS, MAX_ROWS, [16, 16, 16], [1, 1, 4096], [65536, 1, 1], 0.0, 1e30]
WILD_JSON = st.one_of(
    st.sampled_from(TRACE_EDGES),
    st.sampled_from([-1, 0, 1, 2, 3, 27, 2000, 4096, 4097, 2**16, 2**31 - 1, 2**31, 2**63, 10**30, -(2**63)]),
    st.sampled_from([0.5, 2.0, 1e308, float("nan"), float("inf"), -0.0, True, False, None, "", "m", "s1.k3"]),
    st.lists(st.integers(-2, 5), max_size=5),
    st.lists(st.sampled_from([2000, 2**40, 0.5, "x", None]), min_size=3, max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.text(max_size=8),
)
WILD_LINES = [
    b"{not json",
    b"[" * 100_000,
    b'{"op": "linear", "name": "big", "n": ' + b"9" * 5000 + b', "c_in": 1, "c_out": 1}',
    b"\xff\xfe\x00garbage",
    b"null",
    b"42",
    b'"text"',
    b"[]",
    b'{"op": "meta", "x": 1}',
    b'{"op": "conv"}',
    b'{"op": "linear", "name": "nan", "n": NaN, "c_in": 1, "c_out": 1}',
    b"\xef\xbb\xbf{}",
    b" " * 10,
]


@functools.cache
def _base() -> tuple[list[dict], dict[str, np.ndarray], bytes]:
    """The synthetic U-Net trace at 300 voxels (real maps and coordinates) and its maps.npz bytes."""
    workload = synthetic_trace(num_voxels=300)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **workload.arrays)
    return workload.ops, dict(workload.arrays), buffer.getvalue()


def _mutate_config(data, text: str) -> bytes:
    kind = data.draw(
        st.sampled_from(["value"] * 5 + ["drop", "duplicate", "unknown", "bytes", "truncate", "empty"])
    )
    event(f"config: {kind}")
    lines = text.splitlines()
    if kind == "value":  # one key of one section set to a wild value, replacing its line
        section = data.draw(st.sampled_from(sorted(CONFIG_KEYS)))
        key = data.draw(st.sampled_from(CONFIG_KEYS[section]))
        value = data.draw(
            st.one_of(
                st.sampled_from(WILD_TEXT),
                st.sampled_from(EDGES.get((section, key), ["1"])),
                st.text(max_size=6).map(lambda t: t.replace("\n", "")),
            )
        )
        lines = [line for line in lines if line.split("=")[0].split(":")[0].strip().lower() != key.lower()]
        lines.insert(lines.index(f"[{section}]") + 1, f"{key} = {value}")
        return "\n".join(lines).encode("utf-8", "surrogatepass")
    if kind == "drop":
        lines.pop(data.draw(st.integers(0, len(lines) - 1)))
    elif kind == "duplicate":
        index = data.draw(st.integers(0, len(lines) - 1))
        lines.insert(index, lines[index])
    elif kind == "unknown":
        lines.append(
            data.draw(st.sampled_from(["[cache]", "[memory]\nsize = 3", "no header", "[DEFAULT]\nx = 1"]))
        )
    elif kind == "bytes":
        return data.draw(st.binary(max_size=64))
    elif kind == "truncate":
        return text.encode()[: data.draw(st.integers(0, len(text)))]
    else:
        return b""
    return "\n".join(lines).encode()


def _mutate_trace(data, ops: list[dict]) -> bytes:
    kind = data.draw(
        st.sampled_from(["field"] * 6 + ["drop_field", "drop_op", "repeat_op", "line", "truncate"])
    )
    event(f"trace: {kind}")
    ops = [dict(op) for op in ops]
    index = data.draw(st.integers(0, len(ops) - 1))
    lines = None
    if kind == "field":
        op = ops[index]
        key = data.draw(
            st.sampled_from(sorted(op) + ["dilation", "coords_in", "kernel_volume", "transposed"])
        )
        op[key] = data.draw(WILD_JSON)
    elif kind == "drop_field":
        ops[index].pop(data.draw(st.sampled_from(sorted(ops[index]))))
    elif kind == "drop_op":
        ops.pop(index)
    elif kind == "repeat_op":
        ops.insert(index, ops[index])
    lines = [json.dumps(op).encode() for op in ops]
    if kind == "line":
        lines.insert(index, data.draw(st.one_of(st.sampled_from(WILD_LINES), st.binary(max_size=40))))
    text = b"\n".join(lines) + b"\n"
    if kind == "truncate":
        text = text[: data.draw(st.integers(0, len(text)))]
    return text


def _mutate_arrays(data, arrays: dict[str, np.ndarray], npz: bytes, path: pathlib.Path) -> None:
    kind = data.draw(
        st.sampled_from(["array"] * 4 + ["drop", "truncate", "flip", "bytes", "pickled", "folder"])
    )
    event(f"maps: {kind}")
    if kind in ("truncate", "flip", "bytes"):
        blob = bytearray(npz)
        if kind == "truncate":
            blob = blob[: data.draw(st.integers(0, len(blob)))]
        elif kind == "flip":
            for _ in range(data.draw(st.integers(1, 4))):
                blob[data.draw(st.integers(0, len(blob) - 1))] ^= data.draw(st.integers(1, 255))
        else:
            blob = data.draw(st.binary(max_size=200))
        path.write_bytes(bytes(blob))
        return
    if kind == "folder":
        path.mkdir()
        return
    arrays = dict(arrays)
    name = data.draw(st.sampled_from(sorted(arrays)))
    if kind == "drop":
        arrays.pop(name)
    elif kind == "pickled":
        arrays[name] = np.array([{"a": 1}, None], dtype=object)
    else:
        array = arrays[name]
        arrays[name] = data.draw(
            st.sampled_from(
                [
                    array.astype(np.float64),
                    array.astype(bool),
                    array.astype(np.uint64),
                    array.astype(np.int64) + 2**40,
                    array.astype(np.int64) - 1,
                    array.astype(np.int64) * 1000,
                    array.reshape(-1),
                    array.reshape(len(array), -1)[:, :1] if array.size else array,
                    array[: len(array) // 2],
                    array[::-1],
                    np.zeros((0,), np.int32),
                    np.array(7),
                    np.concatenate([array, array]),
                ]
            )
        )
    np.savez(path, **arrays)


def _call(argv: list[str]) -> tuple[int, str]:
    """(exit status, stderr) of main(argv) in process, under an alarm; an escaping exception fails the test."""

    def timeout(signum, frame):
        raise TimeoutError(f"pointacc {' '.join(argv)} ran past {SECONDS_PER_CASE} s")

    err = io.StringIO()
    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(SECONDS_PER_CASE)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            code = main(argv)
    except SystemExit as exit:  # argparse
        code = exit.code
    except Exception as error:
        raise AssertionError(f"pointacc {' '.join(argv)} raised:\n{traceback.format_exc()}") from error
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return code, err.getvalue()


@FUZZ
@given(st.data())
def test_cli_survives_mutated_inputs(data):
    ops, arrays, npz = _base()
    targets = data.draw(st.sets(st.sampled_from(["config", "trace", "maps"]), max_size=2))
    with tempfile.TemporaryDirectory() as folder:
        root = pathlib.Path(folder)
        trace_dir = root / "trace"
        trace_dir.mkdir()
        config_text = (
            PRESETS / data.draw(st.sampled_from(["pointacc.cfg", "pointacc_edge.cfg"]))
        ).read_text()
        config = root / "sim.cfg"
        config.write_bytes(_mutate_config(data, config_text) if "config" in targets else config_text.encode())
        (trace_dir / TRACE).write_bytes(
            _mutate_trace(data, ops)
            if "trace" in targets
            else b"\n".join(json.dumps(op).encode() for op in ops)
        )
        if "maps" in targets:
            _mutate_arrays(data, arrays, npz, trace_dir / "maps.npz")
        else:
            (trace_dir / "maps.npz").write_bytes(npz)
        command = data.draw(st.sampled_from(["run", "run", "explain", "sweep"]))
        common = [
            "-c",
            str(config),
            "-t",
            str(trace_dir),
            "--fidelity",
            data.draw(st.sampled_from(["trace", "analytic"])),
        ]
        if command == "run":
            chart = data.draw(st.sampled_from([[]] + [["--no-chart"]] * 19))
            argv = ["run", *common, "-p", str(root / "out"), *chart]
        elif command == "explain":
            argv = [
                "explain",
                *common,
                "--layer",
                data.draw(st.sampled_from([op["name"] for op in ops] + ["nope"])),
            ]
        else:
            section = data.draw(st.sampled_from(sorted(CONFIG_KEYS)))
            name = data.draw(st.sampled_from(CONFIG_KEYS[section]))
            value = st.one_of(
                st.sampled_from(EDGES.get((section, name), ["1"])), st.sampled_from(WILD_TEXT[:31])
            )
            values = ",".join(data.draw(st.lists(value, min_size=1, max_size=2)))
            argv = ["sweep", *common, "--set", f"{section}.{name}={values}", "-o", str(root / "sweep.csv")]
        code, err = _call(argv)
    event(f"{command}: exit {code}")
    assert code in (0, 2), (argv, code, err)
    assert "Traceback" not in err, err
    if code == 2:  # one message, naming a file we wrote (FILE[:LINE]: ...) or the --set value
        message = [line for line in err.splitlines() if "error:" in line]
        assert len(message) == 1 and message[0].startswith("pointacc: error: "), err
        assert str(root) in message[0] or "--set" in message[0], message[0]
