"""The SVG edit matrix: PDS, SDS and DDS at equal budgets on flat drawings whose right answer is known.

    python scripts/svg_matrix.py OUT_DIR [--steps 1000] [--guidance-scale 100] [--methods pds sds dds]

The command line of pds_nerfstudio/measure/svg_matrix.py (its docstring says the rest).
"""

import sys

from pds_nerfstudio.measure.svg_matrix import main

if __name__ == "__main__":
    sys.exit(main())
