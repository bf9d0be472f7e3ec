"""The base of every spec model: unknown keys are errors, values are immutable after validation."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)
