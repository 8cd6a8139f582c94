"""The DVC stages of dvc.yaml (make run): fetch -> train@<optimizer> (+ test-set scores) -> compare.

One module per stage, each called as `python -m src.stages.<stage>`; params.py reads params.yaml.
"""
