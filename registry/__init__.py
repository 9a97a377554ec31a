"""The adapter store: numbered versions of untouched PEFT directories, indexed in SQLite.

store.py and refs.py are light (the app imports them); operations that need
torch import it inside the functions that use it.
"""
