"""The Ray Serve example (examples/ray_serve_app.py), run when the `ray` dependency group is installed.

Ray is not in the default groups (it is large and starts slowly), so this test skips unless
it is: ``uv run --group ray pytest tests/test_ray_serve.py``. It starts a local Ray instance
in a process of its own, which takes a minute or two on a small machine.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip(
    "ray", reason="Ray Serve is not installed: run with `uv run --group ray pytest tests/test_ray_serve.py`"
)

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ray_serve_app.py"
REQUESTS = 400
LINE = re.compile(
    r"^(?P<name>.+?)\s+(?P<requests>\d+) requests in [\d.]+ s \([\d,]+ req/s\): "
    r"(?P<calls>\d+) feature-store calls \([\d.]+ ids each\), (?P<model>\d+) model batches$"
)


@pytest.mark.timeout(900)
def test_ray_serve_deployment_batches_its_feature_lookups_beside_serve_batch():
    """In a Ray Serve replica, @batch turns the requests' feature lookups into few bulk calls; answers are right."""
    # Ray's workers run this interpreter as it is. By default Ray would start them with the
    # `uv run` command line of the process that started this one: pytest's, which fails.
    env = {**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
    completed = subprocess.run(  # noqa: S603 -- our own example
        [sys.executable, str(EXAMPLE), str(REQUESTS)], capture_output=True, text=True, timeout=840, check=False, env=env
    )
    assert completed.returncode == 0, completed.stderr[-4000:]  # the example checks every answer
    results = {m["name"]: m for m in map(LINE.match, completed.stdout.splitlines()) if m}
    assert set(results) == {"one store call per request", "concresce @batch"}, completed.stdout
    unbatched, batched = results["one store call per request"], results["concresce @batch"]
    assert int(unbatched["requests"]) == int(batched["requests"]) == REQUESTS
    assert int(unbatched["calls"]) == REQUESTS
    assert int(batched["calls"]) < REQUESTS / 2  # concurrent requests of the replica shared bulk calls
    assert 0 < int(batched["model"]) < REQUESTS  # and serve.batch batched the model beside it
