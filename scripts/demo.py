"""`make demo`: a text-driven edit of a procedural scene with `ns-train pds`, end to end.

The command line of pds_nerfstudio/demo.py (its docstring says the rest).
"""

import sys

from pds_nerfstudio.demo import main

if __name__ == "__main__":
    sys.exit(main())
