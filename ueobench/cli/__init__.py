"""The command line (``ueobench``); ``ueobench.cli.app:main`` is the entry point."""
