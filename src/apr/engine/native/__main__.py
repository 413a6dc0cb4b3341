"""`python -m apr.engine.native`: build (or load) the native kernels and say which variant runs here, or why none."""

import argparse
import sys

from apr.engine.native import available, describe, variant

parser = argparse.ArgumentParser(prog="python -m apr.engine.native", description=__doc__)
parser.add_argument(
    "--name",
    action="store_true",
    help="print only the name of the build that loaded (avx2, avxvnni, avx512vnni, amx), or torch where none can "
    "(the reason on stderr); exit 0 either way",
)
args = parser.parse_args()
if args.name:
    # For evidence provenance: stdout holds the answer alone (a fallback's warning goes to stderr), and only a
    # probe that answered exits 0, so a crash is never read as "torch".
    print(variant() or "torch")
    if not available():
        print(describe(), file=sys.stderr)
    sys.exit(0)
print(describe())
sys.exit(0 if available() else 1)
