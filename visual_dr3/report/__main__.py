"""``python -m visual_dr3.report RUN_DIR... --out reports/NAME [--title T] [--group-by KEY]``."""

from __future__ import annotations

import sys

from visual_dr3.report import main

if __name__ == "__main__":
    main(sys.argv[1:])
