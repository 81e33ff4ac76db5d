"""``python -m entrypoints.bench``: the same as ``mds bench``."""

import sys

from entrypoints.bench.cli import main

sys.exit(main())
