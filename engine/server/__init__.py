"""The engine process: job store, executors and the HTTP API (issue 3, first slice)."""
