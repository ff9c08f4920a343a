"""Errors Tether reports to users. Each message says what was wrong and what to do."""

from __future__ import annotations


class TetherError(Exception):
    """Base class: an error with a message meant for the user, shown without a traceback."""


class ConfigError(TetherError):
    """A bad agent file, model reference, tool path or setting."""


class InvalidRequest(ConfigError):
    """A request that cannot be served as asked (a bad field, something the operator does not allow,
    a thread that is busy); `param` names the field, if one is at fault."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class StoreConflict(TetherError):
    """Another actor advanced this run first (a record's seq was taken, or a thread is busy)."""


class LeaseLost(StoreConflict):
    """Another process took over the run's lease, which this one failed to renew in time (it was
    suspended, or too busy, past the lease's expiry): this one stopped advancing it, writing nothing
    more, and the other goes on with it."""


class AlreadyResumed(TetherError):
    """A decision named a pause the run is no longer at."""


class RunNotFound(TetherError):
    pass


class AlreadyFinished(TetherError):
    """The run ended already; there is nothing to cancel."""


class NotFound(TetherError):
    """No object of this kind with this id (for this tenant): "No assistant found with id 'x'."."""

    def __init__(self, kind: str, object_id: str) -> None:
        super().__init__(f"No {kind} found with id '{object_id}'.")
        self.kind, self.object_id = kind, object_id


class ModelError(TetherError):
    """The model call failed after retries."""


class ReplayDiverged(ModelError):
    """A replay was asked for a request that differs from the recording."""

    def __init__(self, step: int, detail: str) -> None:
        super().__init__(f"replay diverged at step {step}: {detail}")
        self.step = step


class BatchNotFound(NotFound):
    """No batch with this id (for this tenant)."""

    def __init__(self, batch_id: str) -> None:
        super().__init__("batch", batch_id)


class BatchInputChanged(TetherError):
    """A batch was resumed with input that differs from what it was created with."""
