"""Synthetic stand-ins for what cannot be downloaded here, with known answers: procedural scenes (their true
colours, depths and masks), the toy Stable Diffusion prior trained on them, tiny randomly initialised priors of
the real architectures, and nerfacto and splatfacto options sized for a CPU. The demo, the benchmarks, `pds-batch`
and the tests build on them."""
