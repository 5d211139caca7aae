"""`hwnas configs`: the recipes, spaces and latency tables hwnas ships, listed and copied out to edit.

They are found as commands find them (`hwnas.config.shipped_root`): in a checkout its `configs/` and
`latency_tables/`, in an installed wheel the copies inside the package. A copy is an ordinary file:
pass its path wherever a shipped name is taken.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from hwnas.config import shipped_root
from hwnas.errors import HwnasError

FOLDERS = ("configs", "latency_tables")
SUFFIXES = (".yaml", ".csv")  # a table's .json travels with its .csv


def shipped_files() -> list[str]:
    root = shipped_root()
    return sorted(str(path.relative_to(root)) for folder in FOLDERS for path in (root / folder).rglob("*")
                  if path.suffix in SUFFIXES)


def list_command() -> dict:
    return {"root": str(shipped_root()), "files": shipped_files()}


def copy_command(name: str, out_dir: str | Path) -> dict:
    """Copy one shipped file (a name as `hwnas configs list` prints it) into `out_dir`, never over a file."""
    files = shipped_files()
    if name not in files:
        close = [f for f in files if Path(f).name == Path(name).name or Path(name).stem in f]
        hint = f" (did you mean {', '.join(close[:3])}?)" if close else " (`hwnas configs list` lists them)"
        raise HwnasError(f"{name}: not a shipped file{hint}")
    source = shipped_root() / name
    sources = [source] + ([source.with_suffix(".json")] if source.suffix == ".csv" else [])
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise HwnasError(f"{out_dir} is a file; give a folder to copy into")
    targets = [out_dir / path.name for path in sources]
    for target in targets:
        if target.exists():
            raise HwnasError(f"{target} exists; choose another folder or remove it")
    out_dir.mkdir(parents=True, exist_ok=True)
    for path, target in zip(sources, targets):
        shutil.copyfile(path, target)
    return {"copied": [str(t) for t in targets], "from": name}
