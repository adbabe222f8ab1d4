"""``python -m lazyfs``: the same as the ``lazyfs`` command."""

import sys

from ._startup import main

sys.exit(main())
