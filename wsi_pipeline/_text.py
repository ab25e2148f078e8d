"""Reading the users' CSV files: UTF-8 with or without a byte-order mark (Excel's "CSV UTF-8" writes one), any line
ending; other encodings are refused in one line naming the file and the fix, never read as garbled names."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from .errors import ConfigError

__all__ = ["open_csv", "read_csv_rows"]


def open_csv(path: str | Path, what: str = "CSV") -> io.StringIO:
    """The text of ``path`` as a file for the ``csv`` module (BOM removed, newlines kept for quoted fields)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except IsADirectoryError as err:
        raise ConfigError(f"{path}: a folder, not a {what} file; check the path") from err
    except OSError as err:
        raise ConfigError(f"{path}: cannot read this {what} ({err.strerror or err}); check the path") from err
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {err.start} is {data[err.start : err.start + 1]!r}); save the {what} as "
            "UTF-8 (Excel: CSV UTF-8)"
        ) from err
    if "\x00" in text:
        raise ConfigError(f"{path}: holds NUL characters (a binary file or UTF-16 text); save the {what} as UTF-8")
    return io.StringIO(text, newline="")


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV as dicts, keys and values stripped (labels, splits, store lists)."""
    if not path.is_file():
        raise ConfigError(f"{path}: CSV not found; check the path")
    with open_csv(path) as fh:
        return [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in csv.DictReader(fh)]
