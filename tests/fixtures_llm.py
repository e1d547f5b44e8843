"""Fixtures for llm tests."""
