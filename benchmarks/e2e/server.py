"""Serve the e2e app for one strategy with uvicorn, in a process of its own.

Started by run.py; not meant to be run by hand (but it can be)::

    python benchmarks/e2e/server.py --dsn DSN --table TABLE --strategy tick

It binds 127.0.0.1 on a free port, prints ``PORT <n>`` on stdout, and serves until
SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import socket
import sys

import uvicorn
from _common import STRATEGIES
from app import create_app


def main() -> None:
    """Parse the command line and serve."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--table", required=True)
    parser.add_argument("--strategy", required=True, choices=STRATEGIES)
    parser.add_argument("--items", type=int, default=10)
    parser.add_argument("--pool-size", type=int, default=10)
    parser.add_argument("--max-size", type=int, default=1000, help="max_size of @batch; 0 for None")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = parser.parse_args()

    app = create_app(
        dsn=args.dsn,
        table=args.table,
        strategy=args.strategy,
        items=args.items,
        pool_size=args.pool_size,
        max_size=args.max_size or None,
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sys.stdout.write(f"PORT {sock.getsockname()[1]}\n")
    sys.stdout.flush()
    config = uvicorn.Config(app, loop=args.loop, ws="none", log_level="warning", access_log=False, backlog=4096)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
