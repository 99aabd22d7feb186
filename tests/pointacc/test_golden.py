import json
from pathlib import Path

import pytest

from pointacc.testing import golden_cases, golden_summary

GOLDEN = Path(__file__).resolve().parent / "golden"
CASES = golden_cases()


def _compare(actual, expected, path="summary"):
    if isinstance(expected, dict):
        assert set(actual) == set(expected), path
        for key in expected:
            _compare(actual[key], expected[key], f"{path}.{key}")
    elif isinstance(expected, float):
        assert actual == pytest.approx(expected, rel=1e-9), path
    else:
        assert actual == expected, path


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_report(name):
    expected = json.loads((GOLDEN / f"{name}.json").read_text())
    actual = json.loads(json.dumps(golden_summary(*CASES[name])))
    _compare(actual, expected)


def test_every_golden_file_has_a_case():
    assert sorted(p.stem for p in GOLDEN.glob("*.json")) == sorted(CASES)
