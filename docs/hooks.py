"""MkDocs hooks for the concresce site (``hooks:`` in mkdocs.yml).

The benchmark plots are written by the benchmark scripts into ``benchmarks/``; the site shows
them without a copy in ``docs/`` (no duplicated binaries, no symlinks): this hook adds each one
to the site's files under ``assets/benchmarks/`` at build time, read from where it lives. A plot
that does not exist is simply not added, so a page must only reference the plots that are
committed (``mkdocs build --strict`` fails on an image that is missing).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Final

from mkdocs.structure.files import File

if TYPE_CHECKING:
    from mkdocs.config.defaults import MkDocsConfig
    from mkdocs.livereload import LiveReloadServer
    from mkdocs.structure.files import Files

#: Path in the site -> path in the repository (relative to mkdocs.yml).
EXTERNAL_FILES: Final = {
    "assets/benchmarks/latest.png": "benchmarks/results/latest.png",
    "assets/benchmarks/latest-cpu.png": "benchmarks/results/latest-cpu.png",
    "assets/benchmarks/e2e-latest.png": "benchmarks/e2e/results/latest.png",
    "assets/benchmarks/threads.png": "benchmarks/results/threads.png",
    "assets/benchmarks/e2e-auto.png": "benchmarks/e2e/results/auto.png",
}


def _root(config: MkDocsConfig) -> Path:
    return Path(config.config_file_path).resolve().parent


def on_files(files: Files, *, config: MkDocsConfig) -> Files:
    """Add the external files that exist to the site."""
    root = _root(config)
    for dest, source in EXTERNAL_FILES.items():
        path = root / source
        if path.is_file():
            files.append(File.generated(config, dest, abs_src_path=str(path)))
    return files


def on_serve(server: LiveReloadServer, *, config: MkDocsConfig, builder: object) -> LiveReloadServer:
    """Rebuild ``mkdocs serve``'s preview when a plot or an included file changes."""
    del builder
    root = _root(config)
    for folder in ("benchmarks/results", "benchmarks/e2e/results", "examples"):
        if (root / folder).is_dir():
            server.watch(str(root / folder))
    return server
