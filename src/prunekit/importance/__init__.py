"""prunekit.importance."""
