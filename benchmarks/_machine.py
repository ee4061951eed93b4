"""What a benchmark run was measured on: the machine, the interpreter and the commit (no paths)."""

from __future__ import annotations

import datetime as dt
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any, Final

REPO_DIR: Final = Path(__file__).resolve().parent.parent


def git(*args: str) -> str:
    """Output of a git command in this repository, or "" when git is not there."""
    executable = shutil.which("git")
    if executable is None:
        return ""
    completed = subprocess.run(  # noqa: S603 -- fixed arguments
        [executable, *args], cwd=REPO_DIR, capture_output=True, text=True, check=False
    )
    return completed.stdout.strip() if completed.returncode == 0 else ""


def machine() -> dict[str, Any]:
    """What the numbers were measured on (no paths)."""
    info: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_model": None,
        "commit": None,
    }
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.partition(":")[2].strip()
                break
    head = git("rev-parse", "--short", "HEAD")
    if head:
        info["commit"] = head + ("+uncommitted src changes" if git("status", "--porcelain", "--", "src") else "")
    return info
