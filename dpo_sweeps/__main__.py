from dpo_sweeps.cli import main

if __name__ == "__main__":
    main()
