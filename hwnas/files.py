"""The one reader of JSON files a user can hand to hwnas (architectures, kits, table metadata, a run's
own records). Every failure is one line of the caller's error family: a folder, a missing file, text
that is not UTF-8, or text that is not JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hwnas.errors import HwnasError


def read_json(path: str | Path, error: type[HwnasError] = HwnasError, what: str = "JSON file") -> Any:
    path = Path(path)
    if path.is_dir():
        raise error(f"{path} is a folder; give a {what}")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except UnicodeDecodeError:
        raise error(f"{path}: not UTF-8 text, so not a {what}") from None
    except OSError as exc:
        raise error(f"{path}: cannot be read ({exc.strerror})") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise error(f"{path}: not valid JSON ({exc})") from None
