"""``python -m tokenflow.cli``: the same as the ``tokenflow`` command."""

import sys

from . import main

sys.exit(main())
