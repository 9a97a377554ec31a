"""A SLURM batch script that trains one profile on several boxes: `qlora-tui slurm PROFILE --nodes N ...`.

The script carries the profile itself (with [dist] filled in for the job), so
it needs nothing but qlora-tui, the model and the data on every node. srun
starts one `qlora-tui run` per node; each writes its own copy of the profile
with its node rank and the first node's address, and that first node writes
the events and checkpoints and registers the adapter in its registry.
"""

from __future__ import annotations

import copy
import re
import shlex

from qlora_tui.runner.dist.plan import DistPlan, check_strategy
from qlora_tui.core.errors import ProfileError
from qlora_tui.core.profile.schema import Profile
from qlora_tui.core.profile.files import dumps_profile
from qlora_tui.core.profile.validate import profile_from_dict

NODE_RANK = "__QLORA_TUI_NODE_RANK__"
MASTER_ADDR = "__QLORA_TUI_MASTER_ADDR__"
DEFAULT_PORT = 29500


def job_profile(profile: Profile, nodes: int, gpus_per_node: int, port: int) -> Profile:
    """The profile as every node of the job runs it (node rank and address filled in on the node)."""
    for flag, value in (("--nodes", nodes), ("--gpus-per-node", gpus_per_node)):
        if value < 1:
            raise ProfileError(f"{flag}: must be a positive number, got {value}")
    if not 0 < port < 65536:
        raise ProfileError(f"--port: must be between 1 and 65535, got {port}")
    doc = copy.deepcopy(profile.to_dict())
    doc["dist"].update(processes=gpus_per_node, nodes=nodes, node_rank=0, master_port=port)
    job = profile_from_dict(doc, source="profile")
    check_strategy(job, DistPlan(gpus_per_node, nodes, 0, job.dist.strategy, "", port, job.dist.timeout_s,
                                 on_gpu=True))
    return job


def sbatch_script(profile: Profile, *, nodes: int, gpus_per_node: int, port: int = DEFAULT_PORT,
                  time_limit: str = "", partition: str = "") -> str:
    """The whole batch script, ready for `sbatch`."""
    job = job_profile(profile, nodes, gpus_per_node, port)
    body = dumps_profile(job, f"{job.name}: written by qlora-tui slurm for {nodes} nodes x {gpus_per_node} GPUs")
    body = re.sub(r"(?m)^node_rank = 0$", f"node_rank = {NODE_RANK}", body)
    body = re.sub(r'(?m)^master_addr = ".*"$', f'master_addr = "{MASTER_ADDR}"', body)
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", job.name)
    options = [f"--job-name=qlora-{name}", f"--nodes={nodes}", "--ntasks-per-node=1",
               f"--gpus-per-node={gpus_per_node}", f"--output=qlora-{name}-%j.out"]
    options += [f"--time={time_limit}"] if time_limit else []
    options += [f"--partition={partition}"] if partition else []
    per_node = (
        'dir="${TMPDIR:-/tmp}/qlora-tui-$SLURM_JOB_ID" && mkdir -p "$dir" && '
        f'printf "%s\\n" "$QLORA_TUI_PROFILE" | sed -e "s/{NODE_RANK}/$SLURM_NODEID/" '
        f'-e "s/{MASTER_ADDR}/$MASTER_ADDR/" > "$dir/profile.toml" && exec qlora-tui run "$dir/profile.toml"'
    )
    lines = [
        "#!/bin/bash",
        f"# {job.name}: {job.train.method} on {nodes} nodes x {gpus_per_node} GPUs ({job.dist.strategy}), "
        "written by qlora-tui slurm.",
        "# Every node needs qlora-tui, the base model and the data at the same paths; node 0 (the first of the",
        "# allocation) writes the events and checkpoints and registers the adapter in its registry.",
        *(f"#SBATCH {o}" for o in options),
        "",
        "set -euo pipefail",
        # awk reads the whole list: `head -n 1` would close the pipe early, and pipefail turns that into exit 141
        'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | awk \'NR == 1\')',
        "export MASTER_ADDR",
        "QLORA_TUI_PROFILE=$(cat <<'QLORA_TUI_PROFILE_END'",
        body.rstrip("\n"),
        "QLORA_TUI_PROFILE_END",
        ")",
        "export QLORA_TUI_PROFILE",
        "",
        "# one qlora-tui run per node; each fills in its node rank (SLURM_NODEID) and the first node's address",
        f"srun --kill-on-bad-exit=1 bash -c {shlex.quote(per_node)}",
        "",
    ]
    return "\n".join(lines)
