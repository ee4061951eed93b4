"""Every Python code block in the documentation runs, and prints what the page says it prints.

The conventions, for whoever writes a page under ``docs/``:

* Every fenced block whose language is ``python`` (or ``py``) in ``docs/**/*.md`` is executed,
  also when it is indented (inside an admonition or a list item).
* The blocks of one page run in order in the namespace of one fresh module (registered in
  ``sys.modules`` while they run, named ``docs_<page>``, so ``if __name__ == "__main__":`` is
  false), and a later block may use what an earlier block of the same page defined. Async code runs the way
  a reader would run it: the block calls ``asyncio.run(...)`` itself; there is no top-level
  ``await``. A block must run on every Python the project supports (3.10 and newer), with the
  ``test`` dependency group only, and quickly (the whole file stays well under 5 seconds).
* A python block followed directly by a ```` ```text title="Output" ```` block must print
  exactly that text (trailing spaces and blank lines aside).
* A block whose first line is ``# requires: name[, name]`` runs only when those modules can be
  imported (the DataLoader comparisons need aiodataloader and strawberry, from the
  ``integration`` group, which the per-Python CI runs do not install); otherwise the page's
  test is skipped after its other blocks ran. Blocks without the marker must not depend on
  what such a block defines.
* A block whose first line is ``# not executed: <reason>`` is shown, not run. There may be at
  most ``MAX_NOT_EXECUTED`` of them in the whole site, and each must give its reason.
* A block that only includes files (``--8<-- "examples/..."`` lines, the cookbook's example
  programs) is not run here: those programs need real servers and are run by
  ``tests/integration``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import importlib.util
import io
import re
import sys
import textwrap
import types
from pathlib import Path
from typing import Final

import pytest

import concresce
import concresce.threads

DOCS: Final = Path(__file__).resolve().parent.parent / "docs"

#: At most this many python blocks in the whole site may be marked ``# not executed: ...``.
MAX_NOT_EXECUTED: Final = 6

#: Guard against a parser that silently finds nothing: the site has at least this many.
MIN_EXECUTED: Final = 30

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`]*)$")
_PYTHON = frozenset({"python", "py", "python3"})
_NOT_EXECUTED = re.compile(r"^#\s*not executed:\s*(?P<reason>.*\S)?\s*$")
_REQUIRES = re.compile(r"^#\s*requires:\s*(?P<modules>.+)$")
_SNIPPET = re.compile(r"^-{1,3}8<-{1,3}")


@dataclasses.dataclass(frozen=True)
class Block:
    """One fenced code block of a page."""

    page: str  # path relative to docs/
    line: int  # 1-based line of the first line of code (after the opening fence)
    lang: str
    info: str
    code: str
    output: str | None = None  # the text of a following ```text title="Output" block

    @property
    def first_line(self) -> str:
        return self.code.lstrip("\n").split("\n", 1)[0].strip()

    @property
    def not_executed_reason(self) -> str | None:
        match = _NOT_EXECUTED.match(self.first_line)
        if match is None:
            return None
        return match["reason"] or ""

    @property
    def requires(self) -> list[str]:
        match = _REQUIRES.match(self.first_line)
        if match is None:
            return []
        return [name.strip() for name in match["modules"].split(",") if name.strip()]

    @property
    def is_include(self) -> bool:
        lines = [line.strip() for line in self.code.splitlines() if line.strip()]
        return bool(lines) and all(_SNIPPET.match(line) for line in lines)

    @property
    def where(self) -> str:
        return f"docs/{self.page}:{self.line}"


def parse_blocks(text: str, page: str) -> list[Block]:
    """Return the fenced code blocks of a Markdown page, with each python block's output block."""
    lines = text.splitlines()
    # (index of the opening fence, index of the closing fence, info string, code)
    fences: list[tuple[int, int, str, str]] = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None or not opening["info"].strip():
            index += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        end = index + 1
        while end < len(lines):
            closing = _FENCE.match(lines[end])
            if (
                closing is not None
                and not closing["info"].strip()
                and closing["fence"][0] == fence[0]
                and len(closing["fence"]) >= len(fence)
            ):
                break
            end += 1
        code = "".join(line.removeprefix(indent) + "\n" for line in lines[index + 1 : end])
        fences.append((index, end, opening["info"].strip(), code))
        index = end + 1
    blocks: list[Block] = []
    for position, (start, end, info, code) in enumerate(fences):
        lang = info.split()[0].lstrip(".{").lower()
        if 'title="Output"' in info:
            continue
        output = None
        if lang in _PYTHON and position + 1 < len(fences):
            next_start, _, next_info, next_code = fences[position + 1]
            if 'title="Output"' in next_info and not any(line.strip() for line in lines[end + 1 : next_start]):
                output = next_code
        blocks.append(Block(page, start + 2, lang, info, code, output))
    return blocks


def _pages() -> dict[str, list[Block]]:
    pages: dict[str, list[Block]] = {}
    for path in sorted(DOCS.rglob("*.md")):
        page = path.relative_to(DOCS).as_posix()
        pages[page] = [block for block in parse_blocks(path.read_text(encoding="utf-8"), page) if block.lang in _PYTHON]
    return pages


PAGES: Final = _pages()
RUNNABLE: Final = {
    page: [block for block in blocks if block.not_executed_reason is None and not block.is_include]
    for page, blocks in PAGES.items()
}


def _normalise(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines())


def _missing_modules(block: Block) -> list[str]:
    return [name for name in block.requires if importlib.util.find_spec(name) is None]


@pytest.mark.parametrize("page", [page for page, blocks in RUNNABLE.items() if blocks])
def test_code_blocks_of_the_page_run(page: str) -> None:
    # A real module, registered while its blocks run: libraries that look a class's module up
    # in sys.modules (dataclasses, pickle, strawberry's type resolution) work as in a script.
    module = types.ModuleType("docs_" + re.sub(r"\W", "_", page.removesuffix(".md")))
    namespace = module.__dict__
    sys.modules[module.__name__] = module
    skipped: list[str] = []
    try:
        for block in RUNNABLE[page]:
            missing = _missing_modules(block)
            if missing:
                skipped.append(f"{block.where} (needs {', '.join(missing)})")
                continue
            # Pad with blank lines so that a traceback points at the line in the .md file.
            source = "\n" * (block.line - 1) + block.code
            stdout = io.StringIO()
            with contextlib.redirect_stdout(stdout):
                exec(compile(source, f"docs/{page}", "exec"), namespace)  # noqa: S102 -- running the docs is the point
            if block.output is not None:
                assert _normalise(stdout.getvalue()) == _normalise(block.output), (
                    f"{block.where}: the block printed something else than its Output block"
                )
    finally:
        del sys.modules[module.__name__]
        namespace.clear()
        gc.collect()
    if skipped:
        pytest.skip(f"{len(skipped)} block(s) not run, their modules are not installed: {'; '.join(skipped)}")


def test_the_docs_have_runnable_blocks() -> None:
    executed = sum(len(blocks) for blocks in RUNNABLE.values())
    assert executed >= MIN_EXECUTED, f"only {executed} python blocks found in docs/: is the parser broken?"


def test_blocks_that_are_not_executed_are_few_and_say_why() -> None:
    marked = [block for blocks in PAGES.values() for block in blocks if block.not_executed_reason is not None]
    without_reason = [block.where for block in marked if not block.not_executed_reason]
    assert not without_reason, f"'# not executed:' needs a reason: {without_reason}"
    assert len(marked) <= MAX_NOT_EXECUTED, (
        f"{len(marked)} python blocks are not executed (at most {MAX_NOT_EXECUTED}): {[b.where for b in marked]}"
    )


def test_output_blocks_follow_a_python_block() -> None:
    orphans = []
    for path in sorted(DOCS.rglob("*.md")):
        page = path.relative_to(DOCS).as_posix()
        blocks = parse_blocks(path.read_text(encoding="utf-8"), page)
        outputs = sum(1 for block in blocks if block.output is not None)
        titled = path.read_text(encoding="utf-8").count('title="Output"')
        if titled != outputs:
            orphans.append(f"docs/{page}: {titled} Output blocks, {outputs} paired with a python block")
    assert not orphans, orphans


def test_reference_page_documents_every_public_name() -> None:
    text = (DOCS / "reference.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^:::\s*concresce\.(\S+)", text, flags=re.MULTILINE))
    threads = {f"threads.{name}" for name in concresce.threads.__all__}
    assert documented == set(concresce.__all__) | threads


# The parser itself, on a page written for the purpose.
_SAMPLE = textwrap.dedent(
    """\
    Text.

    ```python
    print("hi")
    ```

    ```text title="Output"
    hi
    ```

    !!! note
        ```python
        # not executed: shows a fragment
        x = 1
        ```

    ```python
    --8<-- "examples/demo.py"
    ```

    ````markdown
    ```python
    inside a markdown block: not a python block
    ```
    ````

    ```console
    $ uv run pytest
    ```
    """
)


def test_the_parser_finds_blocks_outputs_markers_and_includes() -> None:
    blocks = parse_blocks(_SAMPLE, "sample.md")
    python = [block for block in blocks if block.lang in _PYTHON]
    assert [(block.line, block.code) for block in python] == [
        (4, 'print("hi")\n'),
        (13, "# not executed: shows a fragment\nx = 1\n"),
        (18, '--8<-- "examples/demo.py"\n'),
    ]
    assert python[0].output == "hi\n"
    assert python[1].not_executed_reason == "shows a fragment"
    assert python[2].is_include
    assert [block.lang for block in blocks] == ["python", "python", "python", "markdown", "console"]


@pytest.mark.parametrize(
    ("page", "install", "first_use"),
    [
        ("operating.md", "pip install prometheus-client", "from prometheus_client import"),
        ("operating.md", "pip install opentelemetry-api opentelemetry-sdk", "from opentelemetry.sdk"),
        ("scaling.md", "uv run --group ray python examples/ray_serve_app.py", "uv run --group ray pytest"),
    ],
)
def test_a_page_says_what_to_install_before_its_example_needs_it(page: str, install: str, first_use: str) -> None:
    """A reader who runs a page's example has been told, above it, what to install (what concresce does not bring)."""
    text = (DOCS / page).read_text(encoding="utf-8")
    assert install in text
    assert first_use not in text or text.index(install) < text.index(first_use)


@pytest.mark.parametrize("page", ["index.md", "../README.md"])
def test_the_install_section_does_not_send_readers_to_the_other_concresce(page: str) -> None:
    """``pip install concresce`` installs another project: the install section names concresce-inline and says so."""
    text = (DOCS / page).read_text(encoding="utf-8")
    section = text[text.index("## Install") :]
    section = section[: section.index("\n## ", 3)]
    assert "pip install concresce\n" not in section
    assert "**another project**" in section
    assert "`concresce-inline`" in section
    assert "python3 -m pip install uv" in section  # how to get uv


@pytest.mark.parametrize("page", ["index.md", "../README.md"])
def test_a_section_says_when_not_to_use_concresce(page: str) -> None:
    """Readers learn the three cases concresce is wrong for before they adopt it."""
    text = (DOCS / page).read_text(encoding="utf-8")
    section = text[text.index("## When not to use it") :]
    section = section[: section.index("\n## ", 3)]
    for case in ("never concurrent", "exactly once", "caller's context"):
        assert case in section
