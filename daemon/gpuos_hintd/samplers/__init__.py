"""Signal sources.  Each module holds one sampler; registry.py picks what this host can run."""
