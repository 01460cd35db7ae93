"""``python -m ueobench.cli``: the command line."""
from .app import main

main()
