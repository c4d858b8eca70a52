"""Layer L6: ``python -m crypten_lite.launcher`` is the ``crypten-lite`` command."""

from __future__ import annotations

import sys

from crypten_lite.launcher.cli import main

if __name__ == "__main__":
    sys.exit(main())
