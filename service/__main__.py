"""``python -m ctdd``: the ``ctdd`` command line."""

import sys

from ctdd.cli import main

sys.exit(main())
