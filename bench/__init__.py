"""tproxy: bench."""
