"""``python -m mergeflow``: the same as the ``mergeflow`` command."""

from mergeflow.cli.main import main

main()
