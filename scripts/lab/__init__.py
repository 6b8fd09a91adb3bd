"""Lab tools: measurements behind docs/performance.md, not needed to run or serve the model."""
