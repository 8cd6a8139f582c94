"""`python -m src.homework`: the hw3_q4 sweep's table beside the homework's numbers (src/homework/report.py)."""

from src.homework.report import main

main()
