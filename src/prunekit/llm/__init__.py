"""prunekit.llm."""
