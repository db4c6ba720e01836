"""prunekit.train."""
