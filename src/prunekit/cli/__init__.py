"""prunekit.cli."""
