"""The PostgreSQL server a benchmark runs against: given, from the environment, or throw-away."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

REPO_DIR: Final = Path(__file__).resolve().parent.parent
DSN_VAR: Final = "CONCRESCE_TEST_POSTGRES_DSN"


class BenchmarkError(RuntimeError):
    """A benchmark could not be set up, or measured something wrong."""


@contextlib.contextmanager
def postgres(dsn: str | None, *, log: Callable[[str], None], prefix: str = "concresce-") -> Iterator[tuple[str, str]]:
    """Yield ``(dsn, where it came from)``, starting a throw-away server if there is none.

    ``dsn`` if given, else ``$CONCRESCE_TEST_POSTGRES_DSN``, else a server started with
    ``.ci/servers start`` in a temporary directory (named with ``prefix``) and stopped on exit.
    """
    if dsn:
        yield dsn, "--dsn"
        return
    dsn = os.environ.get(DSN_VAR)
    if dsn:
        yield dsn, DSN_VAR
        return
    servers = REPO_DIR / ".ci" / "servers"
    if not servers.is_file():
        msg = f"no PostgreSQL: pass --dsn or set {DSN_VAR}"
        raise BenchmarkError(msg)
    bash = shutil.which("bash") or "bash"
    directory = tempfile.mkdtemp(prefix=prefix)
    try:
        log("starting a throw-away PostgreSQL with .ci/servers")
        started = subprocess.run(  # noqa: S603 -- our own script
            [bash, str(servers), "start", directory], capture_output=True, text=True, check=False
        )
        if started.returncode != 0:
            msg = f".ci/servers start failed:\n{started.stderr}"
            raise BenchmarkError(msg)
        exports = dict(
            line.removeprefix("export ").split("=", 1) for line in started.stdout.splitlines() if "=" in line
        )
        yield exports[DSN_VAR], ".ci/servers (throw-away, stopped after the run)"
    finally:
        subprocess.run([bash, str(servers), "stop", directory], capture_output=True, check=False)  # noqa: S603
        shutil.rmtree(directory, ignore_errors=True)
