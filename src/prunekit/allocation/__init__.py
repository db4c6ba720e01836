"""prunekit.allocation."""
