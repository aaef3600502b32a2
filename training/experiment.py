"""Deprecated: the d2l experiment moved to `bench.experiment` (an orchestrator, above the training library).

``python -m training.experiment ...`` keeps working, with a warning: it runs ``python -m bench.experiment ...``.
"""

from __future__ import annotations

import runpy
import sys

if __name__ == "__main__":
    print("training.experiment: warning: `python -m training.experiment` is deprecated; use "
          "`python -m bench.experiment`", file=sys.stderr)
    runpy.run_module("bench.experiment", run_name="__main__", alter_sys=True)
