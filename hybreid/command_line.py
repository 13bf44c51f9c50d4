"""What every package's command-line module shares: help that shows defaults, verb groups
that several packages fill (``hybreid edge`` holds commands of the edge runtime and of the
synthetic scenes), one vocabulary for the files a command reads, and the sentence for a
missing optional dependency.

A package's ``cli.py`` imports nothing heavy at its top: building the parser must work
on a camera box without torch, and on a training machine without OpenCV or paho.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from hybreid.errors import UserError
from hybreid.machine import provenance

# One word per kind of model file, the same in every verb.
MODEL_HELP = "registry name; see `hybreid models`"
CHECKPOINT_HELP = "model.pt of a training run"
ARTIFACT_HELP = "exported model: ONNX (`hybreid export onnx`) or TensorRT engine"

# The optional dependencies, by the extra that installs them (setup.cfg).
EXTRAS = {
    "torch": "train", "torchvision": "train", "timm": "train", "matplotlib": "train", "sklearn": "train",
    "scipy": "train",
    "onnx": "export", "onnxslim": "export", "onnxconverter_common": "export", "cryptography": "export",
    "cv2": "edge", "onnxruntime": "edge", "paho": "edge",
    "faiss": "matcher",
    "amqtt": "demo",
    "motmetrics": "bench", "thop": "bench", "fvcore": "bench", "pandas": "bench",
    "tensorrt": "tensorrt", "cuda": "tensorrt",
}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in the help, except where there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False, argparse.SUPPRESS) or action.help is None:
            return action.help or ""
        return super()._get_help_string(action)


def group(commands: argparse._SubParsersAction, name: str, help: str) -> argparse._SubParsersAction:
    """The sub-commands of verb group ``name`` (``hybreid edge ...``), created on first use."""
    parser = commands.choices.get(name)
    if parser is None:
        parser = commands.add_parser(name, help=help, formatter_class=HelpFormatter)
        parser.add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND")
    return next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))


def command(commands: argparse._SubParsersAction, name: str, help: str, handler) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=help, description=help, formatter_class=HelpFormatter)
    parser.set_defaults(func=handler)
    return parser


def missing_extra(exc: ModuleNotFoundError, verb: str) -> UserError | None:
    """One sentence naming the extra that installs the missing module; None for a module of
    hybreid's own or an unknown one (a bug, not an install)."""
    root = (exc.name or "").split(".")[0]
    extra = EXTRAS.get(root)
    if extra is None:
        return None
    return UserError(f"`hybreid {verb}` needs {root}, which this install lacks: pip install 'hybreid[{extra}]'")


def add_output(parser: argparse.ArgumentParser, slug: str, what: str) -> None:
    """``--out FOLDER`` and ``--overwrite``: results never replace committed ones or an earlier
    run by accident. Without ``--out``, a new folder ``runs/<slug>/<date-time>``."""
    parser.add_argument("--out", help=f"folder for {what} (default: a new folder runs/{slug}/<date-time>)")
    parser.add_argument("--overwrite", action="store_true", help="write into --out even where it holds results")
    parser.set_defaults(output_slug=slug)


def output_folder(args: argparse.Namespace) -> Path:
    """The folder of :func:`add_output`, refused where it already holds something. Once the
    command succeeds, ``hybreid.cli`` writes a ``provenance.json`` into it (commit,
    processor, command) that tags every figure there; a failed command leaves none."""
    if args.out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        folder, count = Path("runs") / args.output_slug / stamp, 1
        while folder.exists():  # two runs in one second
            count += 1
            folder = Path("runs") / args.output_slug / f"{stamp}-{count}"
    else:
        folder = Path(args.out)
        if folder.exists() and not folder.is_dir():
            raise UserError(f"--out {folder} is a file; give a folder")
        if folder.is_dir() and any(folder.iterdir()) and not args.overwrite:
            raise UserError(f"{folder} holds earlier results; give another --out, or --overwrite to write over them")
    args.results_folder = folder
    args.provenance = provenance()  # now: the results about to be written must not count as changes
    return folder


def write_provenance(args: argparse.Namespace, argv: list[str]) -> None:
    folder = getattr(args, "results_folder", None)
    if folder is not None and folder.is_dir():
        record = {**args.provenance, "command": ["hybreid", *argv]}
        (folder / "provenance.json").write_text(json.dumps(record, indent=2))


def require(*modules: str) -> None:
    """Import what a long command needs before it starts, so a missing extra is said at once
    (:func:`missing_extra`), not after minutes of work."""
    import importlib

    for module in modules:
        importlib.import_module(module)


def output_file(path: str | Path, overwrite: bool) -> Path:
    """A result file that may be replaced only when asked (``--overwrite``)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise UserError(f"{path} exists; give another --out, or --overwrite to replace it")
    return path


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0-65535, got {port}")
    return port


def add_metrics_options(parser: argparse.ArgumentParser) -> None:
    """``--metrics-port`` and ``--metrics-host``, the same for every long-running service."""
    parser.add_argument("--metrics-port", type=_port,
                        help="serve Prometheus metrics at /metrics and health checks at /healthz and /readyz on "
                             "this port (0: a free one, logged; default: none)")
    parser.add_argument("--metrics-host", default="127.0.0.1",
                        help="the address the metrics listen on; anything but loopback exposes them to the network")


def serve_metrics(args: argparse.Namespace, metrics, pages=None):
    """Start serving ``metrics`` (a collector with ``registry``, ``alive`` and ``ready``), and
    ``pages`` (:class:`hybreid.observability.MetricsServer`), on ``--metrics-host:--metrics-port``;
    returns the server."""
    from hybreid.observability import MetricsServer

    return MetricsServer(metrics.registry, args.metrics_host, args.metrics_port, metrics.alive, metrics.ready,
                         pages).start()
