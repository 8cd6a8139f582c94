"""The homework's questions: update rules by hand (Q1 lives in src/training/update_rules.py, which the
callbacks use), one neuron's backprop (Q3), the hw3 sweep's table (Q4, `python -m src.homework`).
"""
