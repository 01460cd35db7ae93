"""Reports from stored records only: leaderboard tables and their renderers, figures, exports, reported numbers.

Nothing here imports a method, a model or the run machinery: what a table shows comes from records.
"""
