from dpo_sweeps.report.sweep_report import main

raise SystemExit(main())
