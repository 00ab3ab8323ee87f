"""Edit one image with PDS: ``python scripts/edit_image.py --help`` (same as the ``pds-edit-image`` command)."""

from pds_nerfstudio.cli.edit_image import entrypoint

if __name__ == "__main__":
    entrypoint()
