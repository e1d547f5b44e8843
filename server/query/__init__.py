"""query endpoints."""
