"""prunekit.metrics."""
