"""`python -m syncq.cli` runs the `syncq` command (used by tests and when scripts are not on PATH)."""

from syncq.cli.main import main

main()
