"""The folder's conftest: the ``integration`` marker, and skips that fail on CI."""

from __future__ import annotations

from pathlib import Path

import pytest

CONFTEST = Path(__file__).with_name("conftest.py")

TESTS = """
import pytest

def test_needs_postgres(postgres_dsn):
    pass

def test_needs_redis(redis_url):
    pass

def test_skips():
    pytest.skip("for a reason of its own")

@pytest.mark.xfail(strict=True)
def test_expected_failure():
    raise AssertionError

def test_is_marked(request):
    assert request.node.get_closest_marker("integration") is not None
"""


@pytest.fixture
def folder(pytester, monkeypatch):
    """A test folder with this folder's conftest, no server variables, and CI unset."""
    pytester.makeini("[pytest]\nmarkers = integration: needs a real server\n")
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(test_servers=TESTS)
    pytester.makepyfile(test_import_skip='import pytest\npytest.importorskip("no_such_module_here")\n')
    for var in ("CI", "CONCRESCE_TEST_POSTGRES_DSN", "CONCRESCE_TEST_REDIS_URL"):
        monkeypatch.delenv(var, raising=False)
    return pytester


@pytest.mark.parametrize("ci", [None, "", "false", "0"])
def test_missing_servers_skip_off_ci(folder, monkeypatch, ci):
    if ci is not None:
        monkeypatch.setenv("CI", ci)

    result = folder.runpytest("-p", "no:hypothesispytest", "-ra")

    result.assert_outcomes(passed=1, skipped=4, xfailed=1)
    result.stdout.fnmatch_lines(
        [
            "*CONCRESCE_TEST_POSTGRES_DSN is not set*run .ci/servers*",
            "*CONCRESCE_TEST_REDIS_URL is not set*run .ci/servers*",
            "*for a reason of its own*",
        ]
    )


@pytest.mark.parametrize("ci", ["true", "1", "yes", "True"])
def test_every_skip_fails_on_ci(folder, monkeypatch, ci):
    monkeypatch.setenv("CI", ci)

    result = folder.runpytest("-p", "no:hypothesispytest", "-ra", "--continue-on-collection-errors")

    # The fixtures fail (errors in setup), test_skips fails, the skipped module is an error.
    result.assert_outcomes(passed=1, failed=1, errors=3, xfailed=1)
    result.stdout.fnmatch_lines(["*integration tests must not skip*"])
    result.stdout.fnmatch_lines(["*skipped on CI*for a reason of its own*"])
    result.stdout.fnmatch_lines(["*skipped on CI*no_such_module_here*"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_a_server_that_does_not_answer_is_unavailable(folder, monkeypatch):
    # Port 1 of 127.0.0.1: nothing listens there (and an unprivileged process cannot).
    monkeypatch.setenv("CONCRESCE_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:1/postgres")

    result = folder.runpytest("-p", "no:hypothesispytest", "-ra", "-k", "postgres")

    result.assert_outcomes(skipped=2)  # and the module skipped at import
    result.stdout.fnmatch_lines(["*nothing answers at 127.0.0.1:1*"])
