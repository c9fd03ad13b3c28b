"""``python -m benchmarks.bad_inputs`` or ``python benchmarks/bad_inputs``: run the probes (see ``run.py``)."""

import sys
from pathlib import Path

if __package__:
    from .run import main
else:  # run as a folder: import the package from beside it, not its modules as top-level ones
    sys.path[0] = str(Path(__file__).resolve().parents[1])
    from bad_inputs.run import main

sys.exit(main())
