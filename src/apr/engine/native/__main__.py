"""`python -m apr.engine.native`: build (or load) the native kernels and say which variant runs here, or why none."""

import sys

from apr.engine.native import available, describe

print(describe())
sys.exit(0 if available() else 1)
