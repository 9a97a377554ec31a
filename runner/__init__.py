"""The training side of qlora-tui: one run, from a profile to a registered adapter.

The app imports only the runner's small face (events, rundir, launch, resume_rule, queue, dist.plan,
dist.slurm, estimate.memory and .plan, data.preflight, data.preview; tests/test_boundaries.py keeps the
list); everything that touches torch lives behind train.py, in the child process.
"""
