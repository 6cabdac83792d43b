"""The helpers beside this file (``crash_run``, ``torchrun_jobs``) are shared by the tests in the
subfolders that mirror ``meta_train``'s subpackages: put this folder on ``sys.path`` for them."""

import sys
from pathlib import Path

HELPERS = str(Path(__file__).resolve().parent)
if HELPERS not in sys.path:
    sys.path.insert(0, HELPERS)
