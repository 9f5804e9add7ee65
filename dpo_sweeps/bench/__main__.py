"""`python -m dpo_sweeps.bench` runs the CPU benchmarks (cpu.py)."""

from dpo_sweeps.bench.cpu import main

if __name__ == "__main__":
    main()
