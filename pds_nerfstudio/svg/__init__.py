"""SVG editing: parse an SVG into tensors (parse.py), rasterise them in plain torch (geometry.py, rasterizer.py),
write them back as SVG (write.py), and optimise them with the guidance of ``pds_nerfstudio.guidance`` (edit.py)."""
