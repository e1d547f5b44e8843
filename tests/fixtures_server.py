"""Fixtures for server tests."""
