"""tproxy: controllerkit, the shared Kubernetes controller plumbing (see README.md).

Import the modules you need (``controllerkit.kube``, ``.errors``, ``.workqueue``, ``.informer``,
``.log``, ``.serve``); nothing is imported here so that light users (the sidecar, the proxy addon)
do not pay for the kubernetes client import.
"""
