"""Render a procedural multi-view scene in nerfstudio format (numpy only, no GPU).

    python scripts/make_scene.py OUT_DIR      (or python -m pds_nerfstudio.synthetic.make_scene OUT_DIR)
        [--size 64] [--num-views 24] [--objects "red sphere" "blue cube"]
        [--seed 0] [--background gradient|plain] [--fov 50] [--elevations 20 40] [--overwrite]

The command line of pds_nerfstudio/synthetic/make_scene.py (its docstring says the rest).
"""

import sys

from pds_nerfstudio.synthetic.make_scene import main

if __name__ == "__main__":
    sys.exit(main())
