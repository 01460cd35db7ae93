"""Scoring: OOD scores (a registry), label-free rejection rules, and every metric a record holds.

Pure numpy (scikit-learn for AUROC and 2-means), no torch: tables recompute scores from saved predictions.
"""
