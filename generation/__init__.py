"""generation: prompt building, citation parsing and verification, the vLLM client, the vLLM supervisor and
the adapter deployer (shared by the server and the re-tune job)."""
