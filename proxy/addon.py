"""mitmproxy entry point: ``mitmdump --mode transparent --listen-port 8080 -s proxy/addon.py``.

mitmproxy loads this file *by path* as a script (and reloads it when it changes), so it cannot rely
on being imported as ``proxy.addon``. It puts the repository root on ``sys.path`` (relative to this
file) and imports the real addon from the ``proxy`` package, where the code is unit-tested.
"""
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from controllerkit.log import setup_logging  # noqa: E402
from proxy.core import TproxyAddon  # noqa: E402

# JSON log lines from the start (the level option is applied again once mitmproxy is running).
setup_logging("proxy", os.environ.get("TPROXY_LOG_LEVEL", "info"))

addons = [TproxyAddon()]
