"""Fixtures for finetune tests."""
