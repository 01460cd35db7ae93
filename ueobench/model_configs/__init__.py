"""open_clip model configs shipped with ueobench (tiny architectures for tests and the built-in benchmark)."""
