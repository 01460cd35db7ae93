"""Data: protocol files (class splits as data), settings, image sources, the built-in worlds, loaders.

``protocols``, ``settings``, ``sources`` and ``check`` import no torch, so the command line may use them;
``loader`` is the only torch module here.
"""
