"""``python -m l2o.optimizers.native build|status`` (see ``l2o.optimizers.native``)."""

import sys

from l2o.optimizers.native import main

sys.exit(main())
