"""`python -m ella_demo`: see cli.py."""

import sys

from .cli import main

sys.exit(main())
