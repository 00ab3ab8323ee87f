"""Time and measure a stage-1 and a stage-2 iteration of the real `pds` pipeline, ours against the authors' call pattern.

    python scripts/benchmark.py                      # GPU: face scene (or a generated one), SD 1.5 architecture, 128/256/512
    python scripts/benchmark.py --resolutions 32 64  # CPU: tiny prior, generated scene

The command line of pds_nerfstudio/measure/speed.py (its docstring says the rest).
"""

import sys

from pds_nerfstudio.measure.speed import main

if __name__ == "__main__":
    sys.exit(main())
