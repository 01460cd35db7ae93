"""The run store: the results folder's layout, typed records written atomically, claims, provenance.

Records are the source of truth: tables, plots, status and export read them and nothing else.
"""
