"""``python -m analysis.figures``: the figures' command line."""

from analysis.figures.cli import main

raise SystemExit(main())
