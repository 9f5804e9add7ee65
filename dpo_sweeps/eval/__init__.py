"""Generation-based evaluation: what a run's model *says* before and after training.

`samples` writes completions of the reference and the trained policy side by side (samples.jsonl, a W&B table).
Imported inside the job only (torch).
"""
