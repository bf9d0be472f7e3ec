"""The base of every spec model: unknown keys are errors, values are immutable after validation."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class CodeFields(BaseModel):
    """The fields every spec that names the study's own code shares (docs/language.md, "Your own code")."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    args: dict[str, Any] = Field(default_factory=dict, description="keyword arguments passed to the callable")
    code: list[str] = Field(default_factory=list, description="more files (relative to the study's folder) whose "
                            "contents the results depend on; the callable's own module file always counts")
    folder: str | None = Field(None, description="where the module is looked for first (default: the study "
                               "file's folder); not part of any hash")
