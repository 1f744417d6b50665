"""tailguard runtime guard (public API is filled in as modules land)."""
