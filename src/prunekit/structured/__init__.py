"""prunekit.structured."""
