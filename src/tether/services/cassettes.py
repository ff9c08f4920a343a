"""Cassettes: a run's model responses as a file, to replay with `--model replay:PATH`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tether.services.runs import RunsService
from tether.services.views import RunView


@dataclass(frozen=True, slots=True)
class CassetteWritten:
    run: RunView  # the run it was written from
    model_calls: int  # how many responses it holds


async def export_cassette(runs: RunsService, run_id: str, path: Path) -> CassetteWritten:
    """Write the model responses of `run_id` to `path` (never headers, keys or other secrets).
    Raises RunNotFound, or OSError when the file cannot be written."""
    from tether.adapters.models.replay import write_cassette

    view = await runs.get(run_id)
    return CassetteWritten(view, write_cassette(path, view.records, source=run_id))
