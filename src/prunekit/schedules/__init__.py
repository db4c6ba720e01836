"""prunekit.schedules."""
