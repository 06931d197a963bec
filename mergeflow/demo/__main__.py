"""`python -m mergeflow.demo`."""

from mergeflow.demo.run import main

main()
