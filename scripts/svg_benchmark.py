"""Time the plain-torch SVG rasteriser: render, and render + backward, of a 64-path drawing at 256 and 512 pixels.

    python scripts/svg_benchmark.py [--paths 64] [--sizes 256 512] [--repeats 3] [--threads 1]

The command line of pds_nerfstudio/measure/svg_speed.py (its docstring says the rest).
"""

import sys

from pds_nerfstudio.measure.svg_speed import main

if __name__ == "__main__":
    sys.exit(main())
