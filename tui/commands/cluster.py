"""Commands for runs on several boxes: slurm (a ready sbatch script for a profile)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def cmd_slurm(args: argparse.Namespace, home: Path) -> int:
    from qlora_tui.core.profile.files import load_profile
    from qlora_tui.core.profile.shipped import find_profile
    from qlora_tui.runner.dist.slurm import sbatch_script

    profile = load_profile(find_profile(args.profile, home))
    print(sbatch_script(profile, nodes=args.nodes, gpus_per_node=args.gpus_per_node, port=args.port,
                        time_limit=args.time or "", partition=args.partition or ""), end="")
    return 0


def add_commands(sub: Any) -> None:
    p = sub.add_parser("slurm", help="print a SLURM sbatch script that trains a profile on several nodes")
    p.add_argument("profile", help="profile file, or the name of a shipped/user profile")
    p.add_argument("--nodes", type=int, required=True, help="nodes (boxes) of the job")
    p.add_argument("--gpus-per-node", type=int, required=True, help="GPUs on each node: one process each")
    p.add_argument("--port", type=int, default=29500, help="rendezvous port on the first node (default 29500)")
    p.add_argument("--time", help="#SBATCH --time, e.g. 12:00:00")
    p.add_argument("--partition", help="#SBATCH --partition")
    p.set_defaults(func=cmd_slurm)
