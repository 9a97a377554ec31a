"""The events callback on every rank of a distributed run: stops agreed by all ranks, memory gathered from all,
checkpoints completed by rank 0 once every rank has written its part."""

from __future__ import annotations

from typing import Any

from qlora_tui.runner.dist import ranks as distributed
from qlora_tui.runner.callbacks import EventsCallback
from qlora_tui.runner.checkpoints import staging_dir


class DistributedEventsCallback(EventsCallback):
    """EventsCallback whose every per-step decision is the same on all ranks (each is a collective, reached by
    every rank at the same step), so no rank stops, saves or logs alone."""

    def stop_wanted(self) -> bool:
        return bool(self.stop_signalled())  # an AgreedStop: the stop file and every rank's signals, all-reduced

    def more_step_fields(self, fields: dict[str, Any]) -> dict[str, Any]:
        out = distributed.memory_fields()
        tokens = fields.get("tokens_per_s")  # rank 0's real tokens: the counter hooks this rank's model
        if isinstance(tokens, (int, float)):
            out["tokens_per_s_per_gpu"] = tokens
            out["tokens_per_s"] = round(tokens * distributed.world_size(), 1)
        return out

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        distributed.barrier()  # every rank has written its RNG state (and its shard) into the staged checkpoint
        distributed.gather_checkpoint_files(staging_dir(self.run.checkpoints_path) / f"checkpoint-{state.global_step}")
        if distributed.is_main():
            super().on_save(args, state, control, **kwargs)
        distributed.barrier()  # and no rank moves on before the checkpoint is complete
