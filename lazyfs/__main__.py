"""``python -m lazyfs``: the same as the ``lazyfs`` command."""

import sys

from .cli import main

sys.exit(main())
