"""The web server under ``fastadapt serve``: uvicorn's, stopping on a signal as every command does."""

from __future__ import annotations

from typing import Any


def stoppable_server(config: Any) -> Any:
    """uvicorn's server for ``config``, noting in ``stopped_by`` the signal that stopped it (SIGINT / SIGTERM:
    uvicorn stops taking requests, lets running ones finish for up to ``config.timeout_graceful_shutdown`` s, closes),
    so that ``fastadapt serve`` exits 130 / 143 like every command. uvicorn is imported here, as the app extra."""
    import uvicorn

    class Server(uvicorn.Server):
        stopped_by: int | None = None

        def handle_exit(self, sig: int, frame: Any) -> None:
            self.stopped_by = self.stopped_by or sig
            super().handle_exit(sig, frame)

    return Server(config)


__all__ = ["stoppable_server"]
