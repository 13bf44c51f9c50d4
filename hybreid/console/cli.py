"""``hybreid console``: the read-only web console and read API over a matcher's gallery."""

from __future__ import annotations

import ipaddress
import os

from hybreid.command_line import command
from hybreid.errors import UserError

TOKEN_VARIABLE = "HYBREID_CONSOLE_TOKEN"
MIN_TOKEN_CHARS = 16


def read_token(path: str | None) -> str | None:
    """The token from ``path`` (its first line) or from the environment; None without either."""
    if path:
        from hybreid.files import read_regular_file

        token = read_regular_file(path, "console token file", 4096).decode(errors="replace").strip().splitlines()
        token = token[0].strip() if token else ""
    else:
        token = os.environ.get(TOKEN_VARIABLE, "").strip()
        if not token:
            return None
    if len(token) < MIN_TOKEN_CHARS:
        raise UserError(f"the console token must be at least {MIN_TOKEN_CHARS} characters (python -c 'import "
                        "secrets; print(secrets.token_urlsafe(24))' makes one)")
    return token


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _console(args) -> None:
    import uvicorn

    from hybreid.console.app import create_app
    from hybreid.console.live import LiveFeed
    from hybreid.console.reads import ConsoleReads
    from hybreid.mqtt import BrokerConfig

    token = read_token(args.token_file)
    if token is None and not is_loopback(args.host):
        raise UserError(f"the console binds {args.host}, beyond this machine: give it a token (--token-file, or "
                        f"{TOKEN_VARIABLE}), or bind 127.0.0.1")
    live = None
    if args.broker:
        broker = BrokerConfig(url=args.broker, client_id=args.client_id)
        broker.endpoint()  # a malformed URL is one clear error before anything starts
        live = LiveFeed(broker, args.site)
    reads = ConsoleReads(args.db)
    search = None
    if args.artifact:
        from hybreid.console.search import ImageSearch

        search = ImageSearch(args.artifact, args.db)
    figures = None
    if args.figures:
        from hybreid.console.figures import load_figures

        figures = load_figures(args.figures)
    app = create_app(reads, live, token, search, figures)
    if live:
        live.start()
    try:
        print(f"console on http://{args.host}:{args.port}/", flush=True)
        # An open event stream would hold a stop for as long as it waits for an event.
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False,
                    timeout_graceful_shutdown=2)
    finally:
        if live:
            live.stop()
        if search:
            search.close()
        reads.close()


def register(commands) -> None:
    console = command(commands, "console", "read-only web console and JSON read API over a matcher's gallery",
                      _console)
    console.add_argument("--db", default="gallery.sqlite", help="the matcher's gallery (file or postgresql:// URL)")
    console.add_argument("--broker", help="mqtt://host:port: also show the cameras' status and the live decisions")
    console.add_argument("--site", default="+", help="with --broker: one site, or + for all")
    console.add_argument("--client-id", default="hybreid-console", help="MQTT client id")
    console.add_argument("--host", default="127.0.0.1",
                         help="address to listen on; anything but loopback needs a token")
    console.add_argument("--port", type=int, default=8080, help="port to listen on")
    console.add_argument("--artifact", help="the gallery's model (ONNX): also search the identities by a picture")
    console.add_argument("--figures", metavar="SITE.json",
                         help="a `hybreid bench site` result of this site: its IDF1 and HOTA on a page of their own")
    console.add_argument("--token-file", help=f"file holding the token every request must carry (or set "
                                              f"{TOKEN_VARIABLE})")
