"""`python -m nextscale ...`: the same as the `nextscale` command."""

import sys

from nextscale.cli import main

if __name__ == "__main__":
    sys.exit(main())
