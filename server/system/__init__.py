"""system endpoints."""
