"""The bottom layer: errors, paths, hashing, atomic files, the generic registry, progress reporting.

Nothing here imports any other part of ueobench (or torch), so every layer above may use it.
"""
