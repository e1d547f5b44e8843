"""Fixtures for ingest tests."""
