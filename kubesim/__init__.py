"""tproxy: kubesim."""
