"""The plugin interface: ``Method`` and its lifecycle, typed options, the registry, code fingerprints, the catalogue.

Method authors import from the package face (``from ueobench import Method, Options, option, register_method``).
"""
