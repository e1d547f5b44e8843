"""pubmind server."""
