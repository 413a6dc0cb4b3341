"""`python -m apr.engine.native`: build (or load) the native kernels and say which variant runs here, or why none."""

import argparse
import sys

from apr.engine.native import available, describe, variant

parser = argparse.ArgumentParser(prog="python -m apr.engine.native", description=__doc__)
parser.add_argument(
    "--name", action="store_true", help="print only the name of the build that loaded (avx2, avxvnni, avx512vnni, amx)"
)
args = parser.parse_args()
if args.name:
    # stdout holds the name alone (a fallback's warning goes to stderr), for evidence provenance to record.
    print(variant() or "", end="")
    if not available():
        print(describe(), file=sys.stderr)
else:
    print(describe())
sys.exit(0 if available() else 1)
