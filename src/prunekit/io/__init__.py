"""prunekit.io."""
