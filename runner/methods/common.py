"""What every method's trainer builder shares: the events callback, the checkpoint folder, datasets."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qlora_tui.runner.callbacks import EventsCallback
from qlora_tui.runner.checkpoints import staging_dir
from qlora_tui.runner.dist import ranks as distributed
from qlora_tui.runner.dist.callbacks import DistributedEventsCallback
from qlora_tui.runner.events import EventWriter
from qlora_tui.runner.prepared import Prepared
from qlora_tui.runner.rundir import RunDir


def events_callback(prepared: Prepared, run: RunDir, writer: EventWriter,
                    stop_signalled: Callable[[], bool]) -> EventsCallback:
    cls = DistributedEventsCallback if distributed.active() is not None else EventsCallback
    return cls(writer, run, keep_checkpoints=prepared.profile.train.save_total_limit,
               stop_signalled=stop_signalled)


def output_dir(run: RunDir) -> str:
    return str(staging_dir(run.checkpoints_path))


def conversational_dataset(rows: list[dict[str, Any]]) -> Any:
    from datasets import Dataset

    return Dataset.from_list(rows) if rows else None
