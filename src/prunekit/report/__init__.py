"""prunekit.report."""
