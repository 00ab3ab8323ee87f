"""Edit fidelity of PDS against SDS and DDS over a matrix of colour edits whose right answer is known.

    python scripts/fidelity.py OUT_DIR                    # 8 edits x 2 seeds x (pds, sds, dds, pds-splat): about 3 h on 2 cores
    python scripts/fidelity.py OUT_DIR --matrix quick     # 2 edits x 1 seed: about 25 min on 2 cores
    python scripts/fidelity.py OUT_DIR --edits "red sphere:blue sphere" --seeds 0 1 --methods pds
    python scripts/fidelity.py OUT_DIR --scene-kinds splat  # PDS on Gaussian splats only (`ns-train pds-splat`)
    python scripts/fidelity.py OUT_DIR --options --pipeline.scene.pds-proposal-losses True   # measure an option

The command line of pds_nerfstudio/measure/fidelity_matrix.py (its docstring says the rest).
"""

import sys

from pds_nerfstudio.measure.fidelity_matrix import main

if __name__ == "__main__":
    sys.exit(main())
