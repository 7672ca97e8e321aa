"""Reading the body of POST /v1/segment within the limits: size (413 before it is read whole), time
(408 for an upload slower than the request timeout) and the multipart field (422 when missing)."""

from __future__ import annotations

import asyncio

from starlette.requests import Request

from seglab.apps.serve.errors import ACCEPTED_IMAGES, ApiError

__all__ = ["read_upload", "FIELD_NAMES"]

#: Multipart field names taken as the image, in order of preference.
FIELD_NAMES = ("file", "image")


def _too_large(limit: int, seen: str) -> ApiError:
    mb = limit / (1024 * 1024)
    return ApiError(413, "body_too_large", f"The request body is {seen}, over this server's limit of {mb:g} MB "
                    "(--max-upload-mb).", f"uploads of at most {mb:g} MB")


async def _read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise ApiError(400, "bad_content_length", f"Content-Length {declared!r} is not a number.") from None
        if size > limit:  # refused before a byte of the body is read
            raise _too_large(limit, f"{size} bytes (Content-Length)")
    chunks, total = [], 0
    async for chunk in request.stream():  # counted as it arrives: a chunked or lying body stops at the limit
        total += len(chunk)
        if total > limit:
            raise _too_large(limit, f"more than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _replay(body: bytes):
    return {"type": "http.request", "body": body, "more_body": False}


async def read_upload(request: Request, limit: int, timeout_s: float) -> bytes:
    """The image bytes of the request: its multipart ``file`` field, or the raw body."""
    try:
        body = await asyncio.wait_for(_read_limited(request, limit), timeout_s)
    except asyncio.TimeoutError:
        raise ApiError(408, "upload_timeout", f"The upload did not arrive within {timeout_s:g} s "
                       "(--request-timeout-s).", ACCEPTED_IMAGES) from None
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        return body
    replayed = Request(request.scope, receive=lambda: _replay(body))
    try:
        form = await replayed.form(max_files=4, max_fields=16)
    except Exception as e:  # python-multipart's parse errors, a missing boundary
        raise ApiError(400, "bad_multipart", f"The multipart body could not be parsed ({e}).", ACCEPTED_IMAGES) from None
    try:
        for name in FIELD_NAMES:
            part = form.get(name)
            if part is not None:
                if isinstance(part, str):
                    return part.encode("latin-1", errors="replace")  # a text field: decoding will say 415
                return await part.read()
        raise ApiError(422, "missing_field", f"The multipart body has no `file` field (it has: "
                       f"{', '.join(sorted(form.keys())) or 'no fields'}).", ACCEPTED_IMAGES)
    finally:
        await form.close()
