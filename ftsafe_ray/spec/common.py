"""What every part of the campaign spec shares: strict frozen models and the name pattern."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class Strict(BaseModel):
    """A spec section: unknown fields are errors and values never change after validation."""

    model_config = ConfigDict(extra="forbid", frozen=True)
