"""Score exported ensembles (default: the shipped weights/, as process.py finds it) on a labelled manifest: a
shorthand for ``amf evaluate WEIGHTS [WEIGHTS] ...`` (training/evaluate.py), which runs them through the
container's code (runtime.ensemble: ONNX session, TTA, vote) and, given two, adds the paired bootstrap interval
of the difference of their votes. Without ``--out`` the report goes to a temporary folder.

    python bench/score_ensemble.py --manifest ../shared/data/amibr/manifest.csv --split test
        [--weights weights [--weights other/weights]] [--tta none|d4] [--out reports/shipped]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cli.main import main as amf  # noqa: E402
from runtime.contract import default_weights  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Any other option is amf evaluate's (amf evaluate --help).")
    p.add_argument("--weights", type=Path, action="append",
                   help="exported ensemble folder; twice to compare two (default: as process.py)")
    p.add_argument("--out", type=Path, help="report folder (default: a temporary one)")
    args, rest = p.parse_known_args()
    weights = [str(w) for w in args.weights or [default_weights()]]
    with tempfile.TemporaryDirectory() as tmp:
        return amf(["evaluate", *weights, "--out", str(args.out or tmp), *rest])


if __name__ == "__main__":
    sys.exit(main())
