"""``python -m marn_rec.fuzzing``: the command line (and the worker :func:`run_fuzz` starts with
``--worker``), see :func:`marn_rec.fuzzing.runner.main`."""

import sys

from marn_rec.fuzzing.runner import main

if __name__ == "__main__":
    sys.exit(main())
