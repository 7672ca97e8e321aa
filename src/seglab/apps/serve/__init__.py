"""``seglab serve``: a model behind HTTP (FastAPI + uvicorn) with a web page, micro-batching and limits.

Example:
    >>> from fastapi.testclient import TestClient                          # doctest: +SKIP
    >>> app = create_app(Segmenter.from_checkpoint("best.pt"), ServeSettings())  # doctest: +SKIP
    >>> with TestClient(app) as client:                                     # doctest: +SKIP
    ...     client.post("/v1/segment", files={"file": open("street.png", "rb")}).json()

Needs the ``serve`` extra (``pip install 'seglab[serve]'``); importing this package stays light,
the application module is imported on first use.
"""

from __future__ import annotations

from typing import Any

from seglab.apps.serve.settings import ServeSettings

__all__ = ["ServeSettings", "create_app", "load_segmenter", "run_server"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from seglab.apps.serve.app import create_app

        return create_app
    if name in ("load_segmenter", "run_server"):
        from seglab.apps.serve import server

        return getattr(server, name)
    raise AttributeError(name)
