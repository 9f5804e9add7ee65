"""Benchmarks, measured side by side with bare TRL; run with `make bench` (not part of the test suite).

python -m dpo_sweeps.bench          # CPU: reference cache, framework vs bare TRL, start-up (cpu.py)
python -m dpo_sweeps.bench.data     # CPU: data preparation at 30k/100k rows vs bare TRL (data.py, `make bench-data`)
python -m dpo_sweeps.bench.gpu      # GPU: a Qwen2.5-1.5B-sized model through the CLI (gpu.py)
python -m dpo_sweeps.bench.submit   # submitting a sweep to the local SLURM cluster (submit.py)
python -m dpo_sweeps.bench.memory   # the GPU memory estimate against gpu.py's measurements; --presets (memory.py)
python -m dpo_sweeps.bench.search   # the same 16-trial search with and without pruning (search.py, `make bench-search`)
python -m dpo_sweeps.bench.local    # a local sweep one point at a time vs in parallel (local.py, `make bench-local`)
python -m dpo_sweeps.bench.report   # status, report and summary.html at 100/1,000/10,000 points (report.py, `make bench-report`)
"""
