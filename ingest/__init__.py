"""pubmind ingest."""
