"""Sweeps: grids of runs planned once (ids saved with the sweep), executed and resumed by launchers."""
