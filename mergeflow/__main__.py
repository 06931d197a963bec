"""``python -m mergeflow``: the same as the ``mergeflow`` command."""

from mergeflow.cli.main import main

if __name__ == "__main__":  # not when a worker process imports it as its main module
    main()
