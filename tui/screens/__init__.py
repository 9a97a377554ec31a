"""The app's screens: runs, run monitor, new run, registry, compare, help, and their dialogs."""
