"""Entry point of the frozen app: the same CLI, including the hidden `_worker` subcommand the engine uses."""

import sys

from app.cli import main

if __name__ == "__main__":
    sys.exit(main())
