"""Errors the API answers with: a status code and a JSON body saying what was wrong and what is accepted."""

from __future__ import annotations

from typing import Any

__all__ = ["ApiError", "ACCEPTED_IMAGES"]

#: What POST /v1/segment takes, repeated in every error about the body.
ACCEPTED_IMAGES = ("a PNG, JPEG, BMP, TIFF, WebP or GIF image, as multipart/form-data field `file` or as the raw "
                   "request body")


class ApiError(Exception):
    """An answer other than 200: ``status``, a short ``error`` code, a sentence ``detail`` and ``accepted``."""

    def __init__(self, status: int, error: str, detail: str, accepted: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.accepted = accepted
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "error": self.error, "detail": self.detail}
        if self.accepted:
            out["accepted"] = self.accepted
        return out
