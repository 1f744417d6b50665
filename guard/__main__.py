"""`python -m guard` is the `tailguard` command."""

import sys

from guard.cli import main

sys.exit(main())
