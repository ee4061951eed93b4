"""The public namespace: exports, version, the exception tree and packaging (SPEC.md "Public API")."""

from __future__ import annotations

import asyncio
import builtins
import importlib.metadata
import importlib.resources
import re
from types import ModuleType

import pytest

import concresce
from concresce import BatchRoutingError, MissingResultError, _errors, batch, collect, scatter

#: The names SPEC.md's "Public API" table promises, plus the version.
SPEC_NAMES = {"BatchRoutingError", "MissingResultError", "__version__", "batch", "collect", "scatter"}


def test_all_is_sorted():
    """``concresce.__all__`` is in sorted order."""
    assert list(concresce.__all__) == sorted(concresce.__all__)


def test_all_lists_every_public_name_and_nothing_else():
    """Every public name of the package is in ``__all__`` (with ``__version__``), and everything in it exists.

    Submodules (``concresce.threads``, once imported) are not names of the package's own.
    """
    public = {
        name
        for name in dir(concresce)
        if not name.startswith("_") and not isinstance(getattr(concresce, name), ModuleType)
    } | {"__version__"}

    assert set(concresce.__all__) == public
    assert len(concresce.__all__) == len(set(concresce.__all__))
    assert set(concresce.__all__) >= SPEC_NAMES


@pytest.mark.parametrize("name", sorted(set(concresce.__all__) - {"__version__"}))
def test_every_export_claims_the_public_module(name):
    """Each exported object's ``__module__`` is ``concresce``, not the private module defining it."""
    assert getattr(concresce, name).__module__ == "concresce"


def test_version_is_the_installed_distributions():
    """``__version__`` is a str equal to the installed distribution's version."""
    assert isinstance(concresce.__version__, str)
    assert concresce.__version__ == importlib.metadata.version("concresce-inline")


def test_missing_result_error_is_a_key_error_and_a_batch_routing_error():
    """``MissingResultError`` subclasses both ``KeyError`` and ``BatchRoutingError``, itself an ``Exception``."""
    assert issubclass(MissingResultError, KeyError)
    assert issubclass(MissingResultError, BatchRoutingError)
    assert issubclass(BatchRoutingError, Exception)
    assert not issubclass(BatchRoutingError, KeyError)


def test_missing_result_error_str_is_its_message_without_key_error_quotes():
    """``str()`` of a ``MissingResultError`` raised by scatter() is its message, not a quoted repr like KeyError's."""

    @batch
    async def lookup(key):
        keys = await collect(key)
        return scatter({k: k for k in keys if k != "absent"})

    async def main():
        try:
            await lookup("absent")
        except MissingResultError as error:
            return error
        return None

    error = asyncio.run(main())

    assert isinstance(error, MissingResultError)
    assert str(error) == error.args[0]
    assert "'absent'" in str(error)
    assert not str(error).startswith(("'", '"'))


def drawn_tree(docstring):
    """Parse the tree drawn after ``The tree::`` into ``(name, parent, line)`` rows, in order."""
    lines = docstring.split("The tree::", 1)[1].splitlines()
    block = []
    for line in lines:
        if line.strip():
            block.append(line)
        elif block:
            break
    rows = []
    stack = []  # (column, name) of the ancestors of the current line
    for line in block:
        match = re.match(r"[\s│├└─]*?(?P<name>[A-Za-z_]\w*)", line)
        assert match is not None, line
        column = match.start("name")
        while stack and stack[-1][0] >= column:
            stack.pop()
        rows.append((match["name"], stack[-1][1] if stack else None, line))
        stack.append((column, match["name"]))
    return rows


def test_errors_docstring_draws_the_real_exception_tree():
    """The tree in ``_errors``'s docstring matches the classes: drawn parents are bases, other bases are named."""
    rows = drawn_tree(_errors.__doc__)
    exported = {
        name
        for name in concresce.__all__
        if isinstance(getattr(concresce, name), type) and issubclass(getattr(concresce, name), BaseException)
    }

    def resolve(name):
        return getattr(concresce, name, None) or getattr(builtins, name)

    assert [name for name, _, _ in rows] == ["Exception", "BatchRoutingError", "MissingResultError", "OverloadedError"]
    assert {name for name, _, _ in rows} >= exported
    for name, parent, line in rows:
        if parent is None:
            continue
        cls = resolve(name)
        assert resolve(parent) in cls.__bases__, f"{name} is drawn under {parent}"
        for base in cls.__bases__:
            if base is not resolve(parent):
                assert base.__name__ in line, f"{name}'s line does not mention its other base {base.__name__}"


def test_package_has_no_runtime_dependencies():
    """The distribution requires nothing at run time (optional extras aside)."""
    requires = importlib.metadata.requires("concresce-inline") or []

    assert [req for req in requires if not re.search(r";.*\bextra\s*==", req)] == []


def test_py_typed_marker_ships():
    """``py.typed`` is part of the package, and of the installed files when installed from a wheel."""
    assert (importlib.resources.files("concresce") / "py.typed").is_file()

    installed = {str(path) for path in importlib.metadata.files("concresce-inline") or []}
    if "concresce/__init__.py" in installed:  # a wheel install (an editable one lists a .pth instead)
        assert "concresce/py.typed" in installed
