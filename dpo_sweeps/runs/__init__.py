"""Run folders: what every sweep point leaves on disk (`folder`: status.json, metrics, history, progress, written
atomically) and the one reader of a sweep's points that the report, `status`, the sweep summary and the tests share
(`reading`).

Imports nothing heavy and nothing else of dpo_sweeps: every other stage may import it.
"""
