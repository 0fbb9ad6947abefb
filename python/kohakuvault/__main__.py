"""``python -m kohakuvault``: the ``kohakuvault`` command (cli.py)."""
import sys

from .cli import main

sys.exit(main())
