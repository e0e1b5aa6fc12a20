"""mitmproxy entry point: ``mitmdump --mode transparent --listen-port 8080 -s proxy/addon.py``.

mitmproxy loads this file *by path* as a script (and reloads it when it changes), so it cannot rely
on being imported as ``proxy.addon``. It puts the repository root on ``sys.path`` (relative to this
file) and imports the real addon from the ``proxy`` package, where the code is unit-tested.

The addon's hooks are exposed as this module's own attributes (``request = addon.request``, ...),
every hook name defined (``None`` where the addon has no such hook), and ``addons`` is empty.
Why: mitmproxy looks up every event's hook on every addon of its chain, and a script's module is
one of them. A name missing from a *module* costs an AttributeError each time (about 20x a plain
attribute miss), and an addon object nested under the module (``addons = [TproxyAddon()]``) adds
a generator level to each look-up: together about a third of the addon's per-request cost
(bench/, proxy section). Behaviour is identical: the same hooks of the same object are called.
"""

import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from controllerkit.log import setup_logging  # noqa: E402
from proxy.core import TproxyAddon  # noqa: E402
from proxy.mitm import hook_table  # noqa: E402

# JSON log lines from the start (the level option is applied again once mitmproxy is running).
setup_logging("proxy", os.environ.get("TPROXY_LOG_LEVEL", "info"))

addon = TproxyAddon()
addons: list = []
globals().update(hook_table(addon))
