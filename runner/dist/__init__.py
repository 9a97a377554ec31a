"""Training on several processes or boxes: the plan, the launcher and its workers, the ranks' shared state, Slurm."""
