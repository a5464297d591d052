"""What every part of the campaign spec shares: strict frozen models and the name pattern."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


def _check_size(value: object) -> object:
    """Accept a whole number >= 1 or 'all', and nothing else.

    Checked before pydantic's own parsing because a size is used as a slice bound: -3 would
    silently train on all but three examples and 0 on none, and pydantic's lax mode would turn
    true into 1 and 2.5 into an error naming two union branches. One message says what is allowed.
    """
    if value == "all" or (type(value) is int and value >= 1):
        return value
    raise ValueError("a size is a whole number >= 1 or 'all'")


# How many examples to draw from a dataset: a count or every row.
Size = Annotated[int | Literal["all"], BeforeValidator(_check_size)]


class Strict(BaseModel):
    """A spec section: unknown fields are errors and values never change after validation."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def absolute_key_file(path: str | None) -> str | None:
    """An `api_key_file` must be absolute (or `~/...`): a relative one would be read from the
    campaign's directory, which `ray job submit --working-dir` uploads to the cluster, so the
    key would travel with the code."""
    if path is not None and not (path.startswith("~") or PurePosixPath(path).is_absolute()):
        raise ValueError(
            f"api_key_file {path!r} is relative; give an absolute path on the node that "
            "runs the driver (e.g. /home/ray/.ftsafe/openai_key), outside the directory "
            "you submit"
        )
    return path
