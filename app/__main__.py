"""`python -m app`: the development server (uvicorn, reload off)."""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import uvicorn

from app.config import Settings


def main() -> None:
    settings = Settings()
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=settings.HOST,
        port=settings.PORT,
        log_level=settings.LOG_LEVEL.lower(),
        access_log=False,
        loop="uvloop",
        http="httptools",
        # Past the streams' own deadline, so they end (and are charged) before uvicorn cancels them.
        timeout_graceful_shutdown=int(settings.SHUTDOWN_STREAM_DEADLINE_SECONDS) + 5,
    )


if __name__ == "__main__":
    main()
