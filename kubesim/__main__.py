"""kubesim command line: ``python -m kubesim {serve,apply,logs,kubelet,demo} ...``.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``;
they are imported lazily so that ``serve`` does not pay for the kubelet and the other way round.
"""

import importlib
import sys

from controllerkit.cli import ExactArgumentParser

SUBCOMMANDS = {
    "serve": ("kubesim.apiserver.cli", "run the Kubernetes 1.7 API server emulator (HTTPS)"),
    "apply": ("kubesim.apply", "create or update objects from multi-document YAML (like kubectl apply)"),
    "logs": ("kubesim.logs", "print container logs of simulated pods (like kubectl logs)"),
    "kubelet": ("kubesim.kubelet.cli", "run the netns kubelet for one simulated node"),
    "demo": ("kubesim.demo", "run the whole tutorial end to end on this machine (needs root)"),
}


def main(argv=None) -> int:
    parser = ExactArgumentParser(prog="kubesim", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    modules = {}
    for name, (modname, help_) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        try:
            mod = importlib.import_module(modname)
        except ImportError as e:  # a subcommand whose module is not built yet
            p.set_defaults(_missing=f"{name}: not available ({e})")
            continue
        mod.add_arguments(p)
        modules[name] = mod
    args = parser.parse_args(argv)
    if getattr(args, "_missing", None):
        parser.error(args._missing)
    return int(modules[args.command].run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
