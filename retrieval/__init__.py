"""pubmind retrieval."""
