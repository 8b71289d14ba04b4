"""`python -m ella_demo`: see ella_demo/cli."""

import sys

from ella_demo.cli import main

sys.exit(main())
