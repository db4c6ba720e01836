"""prunekit.data."""
