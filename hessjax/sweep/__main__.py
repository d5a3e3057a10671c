"""``python -m hessjax.sweep``."""

import sys

from . import main

sys.exit(main())
