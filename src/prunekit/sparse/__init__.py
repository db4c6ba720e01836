"""prunekit.sparse."""
