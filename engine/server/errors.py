"""The engine's one error body: `{"detail": "<one line naming the field or file>", "field": "params.x" | null}`."""

from __future__ import annotations

from fastapi import HTTPException
from pydantic import BaseModel


class ErrorBody(BaseModel):
    detail: str
    field: str | None = None


def api_error(status: int, detail: str, field: str | None = None) -> HTTPException:
    """The HTTPException of an error answer; `field` names the request field at fault (None: the request)."""
    exc = HTTPException(status, detail)
    exc.field = field  # type: ignore[attr-defined]  # read by the app's error handler where one is installed
    return exc
