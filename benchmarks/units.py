"""Units of work a long benchmark shares between worker processes, each kept in its own folder.

A unit is finished when its folder holds `report.json`. A worker claims a unit with a `FOLDER.claim`
file naming its process; a claim whose process is gone is taken over (the unit resumes from its
checkpoint). Start the same benchmark several times to have several workers.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable, Iterable


def report(folder: Path) -> dict | None:
    path = folder / "report.json"
    return json.loads(path.read_text()) if path.is_file() else None


def started(folder: Path) -> bool:
    return (folder / "config.yaml").is_file()


def claim(folder: Path) -> bool:
    """Whether this process may work on `folder`: another live worker's claim keeps it off."""
    marker = folder.with_name(folder.name + ".claim")
    try:
        other = int(marker.read_text())
        os.kill(other, 0)
        return other == os.getpid()
    except (OSError, ValueError):
        pass  # no claim, or its worker is gone
    marker.unlink(missing_ok=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(marker, "x") as f:
            f.write(str(os.getpid()))
        return True
    except FileExistsError:  # another worker claimed it just now
        return False


def work(pending: Callable[[], Iterable[tuple[Path, Callable[[], object]]]]) -> None:
    """Run the first unclaimed pending unit, again and again, until none is left that no other worker
    holds; `pending` lists (folder, job) anew each time, as finished units can open new ones."""
    while True:
        unit = next(((folder, job) for folder, job in pending() if claim(folder)), None)
        if unit is None:
            return
        folder, job = unit
        print(f"{time.strftime('%H:%M:%S')} {folder.name} ...", flush=True)
        job()
        folder.with_name(folder.name + ".claim").unlink(missing_ok=True)
