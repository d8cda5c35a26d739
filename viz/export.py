"""``python -m viz.export``: the command line under its first name (an alias of ``python -m cli``)."""

import sys

if __name__ == "__main__":
    from cli import main

    sys.exit(main())
