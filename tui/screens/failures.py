"""Background jobs that fail in a way their screen did not foresee: a notification, never a traceback."""

from __future__ import annotations

from textual.worker import Worker, WorkerState


class ShowsWorkerErrors:
    """Screen mixin: an exception escaping a worker (run with exit_on_error=False) becomes an error notification.

    Each worker catches the errors users can cause; this catches the rest (a
    disk that fills, a database another process holds) so the app stays up.
    Screens override worker_failed to clear their busy state.
    """

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state == WorkerState.ERROR:
            self.worker_failed(event.worker)

    def worker_failed(self, worker: Worker[object]) -> None:
        error = worker.error
        what = (worker.group or worker.name or "a background job").replace("-", " ")
        self.notify(f"{what} failed: {type(error).__name__}: {error}", severity="error",  # type: ignore[attr-defined]
                    timeout=15)
