"""The few user-facing error types; the CLI prints them in one line, without a traceback."""


class FtsafeError(Exception):
    """A user-facing error; the CLI prints it in one line."""


class SpecError(FtsafeError):
    """The campaign spec is invalid."""


class DataError(FtsafeError):
    """A dataset or benchmark file cannot be read."""


class StoreError(FtsafeError):
    """The run directory cannot be read or written."""


class JudgeError(FtsafeError):
    """The judge endpoint is misconfigured or unusable."""


class StageError(FtsafeError):
    """A pipeline stage failed in a way the user must fix."""
