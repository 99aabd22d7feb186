"""Rewrites the golden PointAcc reports in tests/pointacc/golden/ from the current simulator.

Run it only when a change of the simulator's results is intended, and say why in the commit message.

Usage:
    python tools/refresh_pointacc_golden.py
"""

import json
import pathlib
import sys

from pointacc.testing import golden_cases, golden_summary

GOLDEN = pathlib.Path(__file__).resolve().parents[1] / "tests" / "pointacc" / "golden"


def main() -> int:
    GOLDEN.mkdir(parents=True, exist_ok=True)
    for name, (config, workload) in golden_cases().items():
        path = GOLDEN / f"{name}.json"
        path.write_text(json.dumps(golden_summary(config, workload), indent=1, sort_keys=True) + "\n")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
