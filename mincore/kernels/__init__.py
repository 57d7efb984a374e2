"""Engine implementations, one module per engine (see mincore.backend for the interface)."""
