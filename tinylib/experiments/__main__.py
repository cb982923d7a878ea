"""`python -m tinylib.experiments list|run-next|run|run-all|results FILE.yaml`: the experiment runner."""

import sys

from tinylib.experiments.runner import main

sys.exit(main())
