"""Comparisons over seeds, no MLflow and no Keras: which runs count and the verdicts (replicates.py),
their tables (tables.py), the numbers (stats.py) and every figure (plots.py).
"""
