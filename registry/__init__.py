"""The adapter store: numbered versions of untouched PEFT directories, indexed in SQLite, and what can be done
with them (import, export, merge, compare, push, verify, gc).

store.py, records.py and the other metadata modules are light (the app imports
them); operations that need torch or huggingface_hub import them inside the
functions that use them, and registry/worker.py runs merge and compare in a
child process.
"""
