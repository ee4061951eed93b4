"""Serve the e2e app for one strategy with uvicorn, in a process of its own.

Started by run.py; not meant to be run by hand (but it can be)::

    python benchmarks/e2e/server.py --dsn DSN --table TABLE --strategy tick

It binds 127.0.0.1 on a free port, prints ``PORT <n>`` on stdout, and serves until
SIGTERM/SIGINT. With ``--workers W`` (W > 1) it forks W worker processes that accept on the
one listening socket, as ``uvicorn --workers W`` and gunicorn do: each worker has its own
event loop, asyncpg pool and ``@batch`` state, so each batches only the requests it
accepted. ``/stats`` sums the counters of every worker.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys

import uvicorn
from _common import STRATEGIES
from app import Counters, create_app


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
    parser.add_argument("--workers", type=int, default=1, help="worker processes on one socket (pool-size each)")
    args = parser.parse_args()

    counters = Counters(args.workers)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sys.stdout.write(f"PORT {sock.getsockname()[1]}\n")
    sys.stdout.flush()
    if args.workers == 1:
        serve(args, counters, sock)
        return
    # Fork before any event loop or thread exists; each worker serves until SIGTERM.
    children = []
    for worker in range(args.workers):
        pid = os.fork()
        if pid == 0:
            counters.use_row(worker)
            serve(args, counters, sock)
            os._exit(0)
        children.append(pid)

    def stop(signum: int, _frame: object) -> None:
        for pid in children:
            os.kill(pid, signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for pid in children:
        os.waitpid(pid, 0)


def serve(args: argparse.Namespace, counters: Counters, sock: socket.socket) -> None:
    """Serve the app on ``sock`` in this process, until SIGTERM/SIGINT."""
    app = create_app(
        dsn=args.dsn,
        table=args.table,
        strategy=args.strategy,
        items=args.items,
        pool_size=args.pool_size,
        max_size=args.max_size or None,
        counters=counters,
    )
    config = uvicorn.Config(app, loop=args.loop, ws="none", log_level="warning", access_log=False, backlog=4096)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
