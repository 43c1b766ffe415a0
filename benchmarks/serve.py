"""The servers the benchmark runs besides kvservice itself, each as its own process.

    python -m benchmarks.serve bare --port N      a bare Bottle route on kvservice's cheroot runner
    python -m benchmarks.serve stock --port N     the same route on stock cheroot, its defaults
    python -m benchmarks.serve waitress --port N  kvservice's app on waitress
    python -m benchmarks.serve starlette --port N the same GET/PUT on Starlette + uvicorn

bare and waitress take kvservice's default configuration (threads, backlog, limits, INFO
logging with an access line per request), so that the only difference from `python -m
kvservice` is the one being measured: the store and routes (bare) or the HTTP server
(waitress). stock is what a user gets from the framework with no tuning at all: the bare
route on cheroot.wsgi.Server as it comes (10 threads), a backlog of 128, no access log.
starlette is the peer a Python user would pick instead: a minimal key-value GET and PUT on a
dict, Starlette on uvicorn with httptools and uvloop, one process, no access log.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Sequence

import bottle

from benchmarks.workloads import VALUE
from kvservice.__main__ import build_store, server_settings
from kvservice.config import Config
from kvservice.http.app import create_app
from kvservice.http.server import RequestLog, Server, write_access_line
from kvservice.lifecycle import configure_logging, run_until_signalled


def create_bare_app() -> bottle.Bottle:
    """The framework ceiling: the cheapest GET and PUT routes Bottle can serve for `/<key>`.

    GET answers VALUE, as long as the values the workloads store; PUT reads the body.
    """
    app = bottle.Bottle()
    app.uninstall(True)
    app.route("/<key>", "GET", lambda key: VALUE)
    app.route("/<key>", "PUT", _bare_put)
    return app


def _bare_put(key: str) -> None:
    environ = bottle.request.environ
    environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    bottle.response.status = 204


def serve_bare(config: Config) -> int:
    """The bare app on kvservice's own runner and settings, until SIGTERM."""
    return run_until_signalled([Server(create_bare_app(), server_settings(config))])


STOCK_THREADS = 10
"""cheroot.wsgi.Server's own default."""
STOCK_BACKLOG = 128


def serve_stock(config: Config) -> int:
    """The bare app on cheroot.wsgi.Server with its defaults, until SIGTERM or SIGINT."""
    from cheroot import wsgi

    server = wsgi.Server(
        (config.host, config.port),
        create_bare_app(),
        numthreads=STOCK_THREADS,
        request_queue_size=STOCK_BACKLOG,
    )
    signal.signal(signal.SIGTERM, _interrupt)  # safe_start stops the server on it
    server.safe_start()
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def serve_waitress(config: Config) -> int:
    """kvservice's app, behind the same access log, on waitress with the same limits."""
    import waitress  # an optional dependency (the `bench` extra), needed only here

    settings = server_settings(config)
    waitress.serve(
        RequestLog(create_app(build_store(config)), [write_access_line]),
        host=config.host,
        port=config.port,
        threads=settings.threads,
        backlog=settings.listen_backlog,
        channel_timeout=settings.socket_timeout_s,
        max_request_header_size=settings.max_header_bytes,
        max_request_body_size=settings.max_body_bytes,
        ident=settings.server_name,
    )
    return 0


def serve_starlette(config: Config) -> int:
    """A minimal key-value GET and PUT on Starlette and uvicorn (httptools, uvloop)."""
    # Optional dependencies (the `bench` extra), needed only here.
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    values: dict[str, bytes] = {}

    async def get(request: Request) -> Response:
        value = values.get(request.path_params["key"])
        if value is None:
            return Response(status_code=404)
        return Response(value, media_type="application/octet-stream")

    async def put(request: Request) -> Response:
        values[request.path_params["key"]] = await request.body()
        return Response(status_code=204)

    app = Starlette(
        routes=[Route("/{key}", get, methods=["GET"]), Route("/{key}", put, methods=["PUT"])]
    )
    uvicorn.run(
        app,
        host=config.host,
        port=config.port,
        http="httptools",
        loop="uvloop",
        access_log=False,
        log_level="warning",
        backlog=config.listen_backlog,
    )
    return 0


SERVERS: dict[str, Callable[[Config], int]] = {
    "bare": serve_bare,
    "stock": serve_stock,
    "waitress": serve_waitress,
    "starlette": serve_starlette,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one of SERVERS on 127.0.0.1 with kvservice's default configuration."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serve", description=__doc__)
    parser.add_argument("server", choices=sorted(SERVERS))
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    config = Config(port=args.port)
    configure_logging(config.log_level)
    return SERVERS[args.server](config)


if __name__ == "__main__":
    sys.exit(main())
