"""Runs that start one after another: the queue's entries on disk and the queue runner that works through them."""
