import sys

from dpo_sweeps.dashboard.server import main

sys.exit(main())
