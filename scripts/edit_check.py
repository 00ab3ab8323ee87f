"""A short edit through every stage at full size, then `ns-render`: a crash anywhere on a user's path shows.

    python scripts/edit_check.py OUT --scene ../shared/data/in2n_face      # GPU: SD 1.5 architecture, fp16
    python scripts/edit_check.py OUT --prior tiny --options <CPU sizes>   # CPU rehearsal

The command line of pds_nerfstudio/measure/edit_check.py (its docstring says the rest).
"""

import sys

from pds_nerfstudio.measure.edit_check import main

if __name__ == "__main__":
    sys.exit(main())
