"""`python -m cli` runs the same command as the `embed` console script."""

from cli.main import main

main()
