"""The base of every spec model: unknown keys are errors, values are immutable after validation."""

from __future__ import annotations

import json
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from inflang.code import check_reference


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    # fields added after studies were run and cached: left out of dumps (hence of task hashes) while they hold
    # their defaults, so adding one keeps every finished task
    late_fields: ClassVar[tuple[str, ...]] = ()

    def model_dump(self, **kwargs: Any) -> dict[str, Any]:
        data = super().model_dump(**kwargs)
        for name in self.late_fields:
            if name in data and getattr(self, name) == type(self).model_fields[name].default:
                del data[name]
        return data

    def model_dump_json(self, **kwargs: Any) -> str:
        if not self.late_fields:
            return super().model_dump_json(**kwargs)
        return json.dumps(self.model_dump(mode="json", **kwargs))


class CodeFields(BaseModel):
    """The fields every spec that names the study's own code shares (docs/language.md, "Your own code")."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    args: dict[str, Any] = Field(default_factory=dict, description="keyword arguments passed to the callable")
    code: list[str] = Field(default_factory=list, description="more files (relative to the study's folder) whose "
                            "contents the results depend on; the callable's own module file always counts")
    folder: str | None = Field(None, description="where the module is looked for first (default: the study "
                               "file's folder); not part of any hash")

    # the module:callable each subclass calls, whichever of these it has (a dataset's loader, a model's
    # factory, an estimator's scorer)
    @field_validator("loader", "factory", "scorer", check_fields=False)
    @classmethod
    def _reference(cls, value: str) -> str:
        return check_reference(value)
