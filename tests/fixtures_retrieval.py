"""Fixtures for retrieval tests."""
