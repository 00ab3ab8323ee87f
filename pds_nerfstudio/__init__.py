"""Text-driven 3D scene editing with Posterior Distillation Sampling, as a nerfstudio plugin."""

__version__ = "0.1.0"
