"""Placement evaluation (scripts/evaluate.py): the fixed suite (`suite`), the three conditions it
renders (`render`), where each tag's region is and how much an output looks like a reference there
(`regions`), the statistics (`stats`, numpy only) and the report (`report`)."""
