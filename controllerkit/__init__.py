"""tproxy: controllerkit."""
