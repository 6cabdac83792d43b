"""``python analysis/figures.py …``: runs the :mod:`analysis.figures` package's command line.

The package ``analysis/figures/`` is what ``import analysis.figures`` finds (a package wins over a
module of the same name); this file only keeps the documented script path working.
"""

import sys
from pathlib import Path

if __name__ == "__main__":
    # As a script, Python puts analysis/ first on sys.path, where this file would shadow the
    # package; use the checkout root instead (when the project isn't installed).
    sys.path[0] = str(Path(__file__).resolve().parent.parent)
    from analysis.figures.cli import main

    raise SystemExit(main())
