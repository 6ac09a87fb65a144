"""Errors a user can cause. Each message names the problem; the CLI prints it and exits 1,
the server turns it into an OpenAI-style 4xx body."""


class EmberError(Exception):
    """Base class of user-facing errors."""


class InvalidInputError(EmberError, ValueError):
    """A request, prompt or option that Ember cannot accept (HTTP 400)."""

    def __init__(self, message: str, *, param: str | None = None):
        super().__init__(message)
        self.param = param


class ModelLoadError(EmberError):
    """A model that cannot be found, read or built."""


class WorkerError(EmberError):
    """A tensor/pipeline-parallel worker process died or failed; its instance cannot run
    further steps (in-flight requests fail with this error)."""
