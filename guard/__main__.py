"""`python -m tailguard` is the `tailguard` command."""

import sys

from tailguard.tools.cli import main

sys.exit(main())
