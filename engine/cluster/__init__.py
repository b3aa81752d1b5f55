"""Running jobs on a Ray cluster: a driver in the engine's worker process, the job itself on a cluster node."""
