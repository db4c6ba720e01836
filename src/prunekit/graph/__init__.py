"""prunekit.graph."""
