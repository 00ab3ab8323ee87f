"""Methods that this plugin registers with nerfstudio (entry-point group ``nerfstudio.method_configs``).

nerfstudio imports this module from ``nerfstudio.configs.method_configs`` on every command
(``ns-train``, ``ns-render``, ``ns-viewer``, ``ns-eval``, ``ns-export``), so it installs our
environment fixes first and stays light: no diffusers import here.
"""

from __future__ import annotations

import torch

from pds_nerfstudio import compat

compat.install()

from nerfstudio.cameras.camera_optimizers import CameraOptimizerConfig  # noqa: E402
from nerfstudio.configs.base_config import MachineConfig, ViewerConfig  # noqa: E402
from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManagerConfig  # noqa: E402
from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig  # noqa: E402
from nerfstudio.engine.optimizers import AdamOptimizerConfig  # noqa: E402
from nerfstudio.engine.schedulers import ExponentialDecaySchedulerConfig  # noqa: E402
from nerfstudio.engine.trainer import TrainerConfig  # noqa: E402
from nerfstudio.pipelines.base_pipeline import VanillaPipelineConfig  # noqa: E402
from nerfstudio.plugins.types import MethodSpecification  # noqa: E402

from pds_nerfstudio.data.dataparser import PDSNerfstudioDataParserConfig  # noqa: E402
from pds_nerfstudio.data.datamanager import PDSDataManagerConfig  # noqa: E402
from pds_nerfstudio.data.full_image_datamanager import PDSFullImageDataManagerConfig  # noqa: E402
from pds_nerfstudio.edit.pipeline import EditPipelineConfig  # noqa: E402
from pds_nerfstudio.edit.trainer import PDSTrainerConfig  # noqa: E402
from pds_nerfstudio import legacy_configs  # noqa: E402
from pds_nerfstudio.moved_flags import refuse_moved_flags  # noqa: E402
from pds_nerfstudio.scenes.nerfacto import NerfactoScene, NerfactoSceneConfig  # noqa: E402
from pds_nerfstudio.scenes.nerfacto_offline import OfflineNerfactoModelConfig  # noqa: E402
from pds_nerfstudio.scenes.splatfacto import (  # noqa: E402
    PDSSplatfactoModelConfig,
    SplatfactoScene,
    SplatfactoSceneConfig,
    splatfacto_optimizers,
)

refuse_moved_flags()
legacy_configs.register()

HAS_CUDA = torch.cuda.is_available()


def default_machine() -> MachineConfig:
    """The GPU when there is one, else the CPU (stock methods assume CUDA and fail without it)."""
    return MachineConfig(device_type="cuda" if HAS_CUDA else "cpu")


def nerfacto_model() -> OfflineNerfactoModelConfig:
    """Nerfacto's model settings as in nerfstudio 1.1.5's ``method_configs["nerfacto"]``, without the per-view
    appearance embedding (the authors' recipe: "not using an appearance embedding leads to better results";
    a per-view code would absorb the edit of its view)."""
    return OfflineNerfactoModelConfig(
        eval_num_rays_per_chunk=1 << 15,
        average_init_density=0.01,
        camera_optimizer=CameraOptimizerConfig(mode="SO3xR3"),
        use_appearance_embedding=False,
    )


def nerfacto_optimizers() -> dict:
    """Nerfacto's optimizers and schedules as in nerfstudio 1.1.5's ``method_configs["nerfacto"]``."""
    return {
        "proposal_networks": {
            "optimizer": AdamOptimizerConfig(lr=1e-2, eps=1e-15),
            "scheduler": ExponentialDecaySchedulerConfig(lr_final=0.0001, max_steps=200000),
        },
        "fields": {
            "optimizer": AdamOptimizerConfig(lr=1e-2, eps=1e-15),
            "scheduler": ExponentialDecaySchedulerConfig(lr_final=0.0001, max_steps=200000),
        },
        "camera_opt": {
            "optimizer": AdamOptimizerConfig(lr=1e-3, eps=1e-15),
            "scheduler": ExponentialDecaySchedulerConfig(lr_final=1e-4, max_steps=5000),
        },
    }


pds_nerfacto_method = MethodSpecification(
    config=TrainerConfig(
        method_name="pds-nerfacto",
        steps_per_eval_batch=500,
        steps_per_save=2000,
        max_num_iterations=30000,
        mixed_precision=HAS_CUDA,
        machine=default_machine(),
        pipeline=VanillaPipelineConfig(
            datamanager=VanillaDataManagerConfig(
                dataparser=NerfstudioDataParserConfig(),
                train_num_rays_per_batch=4096,
                eval_num_rays_per_batch=4096,
            ),
            model=nerfacto_model(),
        ),
        optimizers=nerfacto_optimizers(),
        viewer=ViewerConfig(num_rays_per_chunk=1 << 15),
        vis="viewer",
    ),
    description="Nerfacto reconstruction for PDS editing: stock nerfacto without appearance embedding, offline and on CPU.",
)


pds_method = MethodSpecification(
    config=PDSTrainerConfig(
        method_name="pds",
        steps_per_eval_batch=500,
        steps_per_save=1000,
        max_num_iterations=75000,
        mixed_precision=HAS_CUDA,
        machine=default_machine(),
        pipeline=EditPipelineConfig(
            datamanager=PDSDataManagerConfig(
                dataparser=NerfstudioDataParserConfig(),
                train_num_rays_per_batch=4096,
                eval_num_rays_per_batch=4096,
            ),
            model=nerfacto_model(),
            scene=NerfactoSceneConfig(fast_encoding="compile" if HAS_CUDA else "off"),
        ),
        optimizers=nerfacto_optimizers(),
        edit_optimizers=NerfactoScene.edit_optimizers(),
        viewer=ViewerConfig(num_rays_per_chunk=1 << 15),
        vis="viewer",
    ),
    description="Text-driven scene editing with Posterior Distillation Sampling: reconstruction, PDS, refinement.",
)


def splat_datamanager() -> PDSFullImageDataManagerConfig:
    """Whole images, with splatfacto's seed points read from the scene (`ply_file_path` in transforms.json)."""
    return PDSFullImageDataManagerConfig(dataparser=PDSNerfstudioDataParserConfig(load_3D_points=True))


pds_splatfacto_method = MethodSpecification(
    config=TrainerConfig(
        method_name="pds-splatfacto",
        steps_per_eval_image=500,
        steps_per_eval_batch=0,
        steps_per_save=2000,
        steps_per_eval_all_images=1000000,
        max_num_iterations=30000,
        mixed_precision=False,
        machine=default_machine(),
        pipeline=VanillaPipelineConfig(datamanager=splat_datamanager(), model=PDSSplatfactoModelConfig()),
        optimizers=splatfacto_optimizers(),
        viewer=ViewerConfig(num_rays_per_chunk=1 << 15),
        vis="viewer",
    ),
    description="Splatfacto reconstruction for PDS editing: stock splatfacto, offline, and on CPU with a reference rasteriser.",
)


pds_splat_method = MethodSpecification(
    config=PDSTrainerConfig(
        method_name="pds-splat",
        steps_per_eval_image=500,
        steps_per_eval_batch=0,
        steps_per_save=1000,
        steps_per_eval_all_images=1000000,
        max_num_iterations=75000,
        mixed_precision=False,
        machine=default_machine(),
        pipeline=EditPipelineConfig(datamanager=splat_datamanager(), model=PDSSplatfactoModelConfig(),
                                    scene=SplatfactoSceneConfig()),  # fmt: skip
        optimizers=splatfacto_optimizers(),
        edit_optimizers=SplatfactoScene.edit_optimizers(),
        viewer=ViewerConfig(num_rays_per_chunk=1 << 15),
        vis="viewer",
    ),
    description="Text-driven editing of a Gaussian splat scene with PDS: reconstruction (splatfacto), PDS, refinement.",
)
