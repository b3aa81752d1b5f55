"""Review decisions and threshold arithmetic: plain Python, no Qt, so the CLI and tests can use them too."""
