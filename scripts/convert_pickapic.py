"""Convert a Pick-a-Pic-style export (parquet or JSON/JSONL) into a flowalign preference manifest.

    python scripts/convert_pickapic.py train.parquet --out data/pickapic [--skip-bad]

See ``flowalign.data.pickapic`` for the columns read and the files written. Prints the summary (pairs, ties left
out, bad rows skipped with their row and reason) as JSON; exits 1 with the bad row named when one cannot be used
and ``--skip-bad`` is not given.
"""

from __future__ import annotations

import argparse
import json
import sys

from flowalign.data.pickapic import convert_pickapic
from flowalign.errors import FlowAlignError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="the export: .parquet (needs pyarrow), .json (array of rows) or .jsonl")
    parser.add_argument("--out", required=True, help="output folder (replaced): pairs.jsonl and images/")
    parser.add_argument("--skip-bad", action="store_true", help="leave out unusable rows and list them")
    args = parser.parse_args(argv)
    try:
        summary = convert_pickapic(args.source, args.out, skip_bad=args.skip_bad)
    except FlowAlignError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
