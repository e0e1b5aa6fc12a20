"""tproxy: initializer."""
