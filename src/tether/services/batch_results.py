"""A batch's results file (`--out`): JSONL, or CSV when the name ends in .csv.

One line a case that ended, in `CaseResult.to_dict`'s shape. At the start of a run the file is
rewritten from the store (a temporary file renamed over it, so it is whole at every moment); then
each case that ends is appended as one whole line in one write, so a process killed at any moment
leaves a valid file, and after any number of resumes the file holds each ended case exactly once.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tether.domain.batches import ENDED, RESULT_FIELDS, CaseResult, CaseStatus
from tether.domain.errors import ConfigError

if TYPE_CHECKING:
    from tether.services.batches import BatchesService

PAGE = 500


def is_csv(path: Path) -> bool:
    return path.suffix.lower() == ".csv"


def result_line(result: CaseResult, *, csv_format: bool) -> str:
    """One case as one line of the file (with its newline)."""
    data = result.to_dict()
    if not csv_format:
        return json.dumps(data, ensure_ascii=False, default=str) + "\n"
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow([_cell(data[name]) for name in RESULT_FIELDS])
    return buf.getvalue()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict | list | bool):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def header_line() -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(RESULT_FIELDS)
    return buf.getvalue()


async def write_results(service: BatchesService, batch_id: str, path: Path,
                        skip: Collection[CaseStatus] = frozenset()) -> None:
    """Write every ended case of the batch (but those of a status in `skip`) to `path`, atomically."""
    csv_format = is_csv(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            if csv_format:
                f.write(header_line())
            after = -1
            while True:
                page = await service.cases(batch_id, after=after, limit=PAGE)
                for result in page:
                    if result.status in ENDED and result.status not in skip:
                        f.write(result_line(result, csv_format=csv_format))
                if len(page) < PAGE:
                    break
                after = page[-1].index
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write the results file {path}: {e.strerror or e}") from None


class ResultsWriter:
    """Appends ended cases to a results file, a whole line in one write each."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.csv = is_csv(path)
        try:
            self._fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as e:
            raise ConfigError(f"cannot write the results file {path}: {e.strerror or e}") from None

    def write(self, result: CaseResult) -> None:
        if self._fd is None:
            return
        data = result_line(result, csv_format=self.csv).encode("utf-8")
        os.write(self._fd, data)  # one write of the whole line: a kill leaves whole lines only

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
