"""The training side of qlora-tui: one run, from a profile to a registered adapter.

Only the light modules (profile, events, rundir, home, estimate, launch) may be
imported by the app; everything that touches torch lives behind train.py.
"""
