"""tproxy: podwatch."""
