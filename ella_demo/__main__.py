"""`python -m ella_demo`: see cli.py."""

import sys

from ella_demo.cli import main

sys.exit(main())
