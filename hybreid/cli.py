"""The ``hybreid`` command: each package registers its own verbs (its ``cli.py``); this
file only assembles them and runs one.

Building the parser imports no torch, OpenCV, ONNX Runtime or paho: each verb imports
what it needs when it runs, so a camera box without torch runs the edge verbs, and a
verb whose optional dependency is missing says which extra installs it.
"""

from __future__ import annotations

import argparse
import logging
import sys

from hybreid import __version__
from hybreid.bench import cli as bench
from hybreid.calibration import cli as calibration
from hybreid.command_line import HelpFormatter, missing_extra, write_provenance
from hybreid.console import cli as console
from hybreid.demo import cli as demo
from hybreid.edge_runtime import cli as edge_runtime
from hybreid.errors import UserError
from hybreid.eval import cli as evaluation
from hybreid.export import cli as export
from hybreid.matcher import cli as matcher
from hybreid.models import cli as models
from hybreid.synthetic import cli as synthetic
from hybreid.train import cli as train
from hybreid.viz import cli as viz

# In the order `hybreid --help` lists them: from data to deployment, then tools.
PACKAGES = (models, synthetic, train, evaluation, export, calibration, edge_runtime, matcher, console, bench, viz,
            demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hybreid", formatter_class=HelpFormatter, allow_abbrev=False,
                                     description="Person re-identification from training to a fleet of cameras.")
    parser.add_argument("--version", action="version", version=f"hybreid {__version__}")
    loudness = parser.add_mutually_exclusive_group()
    loudness.add_argument("-v", "--verbose", action="store_true", help="log debugging detail")
    loudness.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    parser.add_argument("--log-format", choices=["text", "json"], default="text",
                        help="log lines as text, or as one JSON object each (for a log collector)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for package in PACKAGES:
        package.register(commands)
    _no_abbreviations(parser)
    return parser


def _no_abbreviations(parser: argparse.ArgumentParser) -> None:
    """Refuse option prefixes everywhere: `--password` must not quietly mean `--password-file`."""
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _no_abbreviations(sub)


def _verb(args: argparse.Namespace) -> str:
    return " ".join(str(getattr(args, key)) for key in vars(args) if key == "command" or key.endswith("_command"))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    # hybreid's own log at the asked level; third-party libraries (ONNX Runtime's quantizer logs
    # every bias copy at INFO on the root logger) say only warnings and errors.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.log_format == "json":
        from hybreid.observability import JsonLogFormatter

        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonLogFormatter())
    logging.getLogger("hybreid").setLevel(logging.DEBUG if args.verbose else logging.WARNING if args.quiet
                                          else logging.INFO)
    try:
        args.func(args)
    except UserError as exc:
        print(f"hybreid: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        problem = missing_extra(exc, _verb(args))
        if problem is None:
            raise
        print(f"hybreid: error: {problem}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hybreid: {_verb(args)} interrupted", file=sys.stderr)
        return 130
    write_provenance(args, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
