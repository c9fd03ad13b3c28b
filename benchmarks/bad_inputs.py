"""Bad inputs and faults, tried as a tester would: the command of the package ``benchmarks/bad_inputs/``.

Kept so that ``python benchmarks/bad_inputs.py [--only CATEGORY] [--match TEXT] [--json FILE]`` runs
as before.  The harness, the catalogues and the options are in the package (its ``run.py``).
"""

import sys

from bad_inputs.run import main  # the package beside this file: a folder wins over a module of one name

if __name__ == "__main__":
    sys.exit(main())
