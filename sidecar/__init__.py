"""tproxy: sidecar."""
