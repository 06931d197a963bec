"""The demo behind `make demo`: builds small models offline, merges them with and without alignment and
reports what changed (`python -m mergeflow.demo`)."""
