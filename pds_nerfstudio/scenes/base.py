"""What the edit core asks of a scene representation: a small interface that nerfacto and splatfacto implement.

A scene kind is a :class:`SceneConfig` (its own edit options, `--pipeline.scene.*`) whose `_target` is its
:class:`SceneAdapter`, as nerfstudio's configs name the class they build. `method_configs.py` composes a kind's
scene config with the edit pipeline's: a third kind is one module here plus its method entry there.

The stage schedule, stage 1's guidance step, stage 2's dataset refresh, resume, logging and the viewer live
once, in :class:`pds_nerfstudio.edit.pipeline.EditPipeline`. A scene adapter answers four questions:

- render one training view whole, with gradient (stage 1): :meth:`SceneAdapter.render_view`;
- render one view without gradient, as `ns-render` does (every training view at the end of a stage, the
  stall probe): :meth:`SceneAdapter.render_still`, and with its depth (the edit region):
  :meth:`SceneAdapter.render_surface`;
- which parameters the edit stages freeze, and what else changes where the edit starts:
  :meth:`SceneAdapter.begin_edit`;
- whether a checkpoint of another method is a starting scene of this kind: :meth:`SceneAdapter.starting_scene_problem`,
  and what its model options must become to load it: :meth:`SceneAdapter.adopt_starting_checkpoint`.

It also owns what the core would otherwise have to know of the representation: the edit stages' optimiser groups
(:meth:`SceneAdapter.edit_optimizers`) and its own options for the core's advice messages
(:attr:`SceneAdapter.learning_rate_options`, :attr:`SceneAdapter.memory_options`), so a user is never told to
change an option their method lacks.

Training on the training images (stages 0 and 2) is nerfstudio's own `VanillaPipeline` step, which the
ray-based (nerfacto) and the full-image (splatfacto) datamanagers both serve.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Type

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from nerfstudio.cameras.cameras import Cameras
from nerfstudio.configs.base_config import InstantiateConfig
from nerfstudio.models.base_model import Model


@dataclass
class SceneRender:
    """A view rendered with gradient, and the scene's own regularising losses over it (added to stage 1 when
    the pipeline asks for them)."""

    rgb: Float[Tensor, "height width 3"]
    losses: Dict[str, Float[Tensor, ""]] = field(default_factory=dict)


@dataclass
class SurfaceRender:
    """A still render's colour and where each pixel's ray meets what it renders (distances along its unit ray)."""

    rgb: Float[Tensor, "height width 3"]
    depth: Float[Tensor, "height width"]
    """The surface the pixel sees: where the edit region back-projects the view's mask."""
    near: Float[Tensor, "height width"]
    far: Float[Tensor, "height width"]
    """The stretch of the ray that carries most of its render (near = far = depth where the scene renders one surface
    per ray): where the edit region is read, as its largest value there (:meth:`SceneAdapter.ray_stretch`)."""


RayValue = Callable[
    [Float[Tensor, "*rays 3"], Float[Tensor, "*rays 3"], Float[Tensor, "*rays"], Float[Tensor, "*rays"]],
    Float[Tensor, "*rays"],
]
"""A value of every ray (origins, unit directions, and the stretch [near, far] of it that carries its render): an
output the edit adds."""


PointValue = Callable[[Float[Tensor, "n 3"]], Float[Tensor, "n"]]
"""A value of every point in the scene's coordinates (the edit region's, 0 outside it)."""


class ExtraOutputs:
    """A model mixin: outputs that an edit adds to the model's renders (`extra_outputs`: name -> a function of the
    camera and the model's own outputs), which nerfstudio's viewer lists beside rgb and depth and `ns-render` renders
    with `--rendered-output-names`. Set through :meth:`SceneAdapter.show_output`."""

    def get_outputs_for_camera(self, camera: Cameras, obb_box: Optional[Any] = None) -> Dict[str, Tensor]:
        outputs = self.own_outputs_for_camera(camera, obb_box=obb_box)
        for name, output in getattr(self, "extra_outputs", {}).items():
            outputs[name] = output(camera, outputs)
        return outputs

    def own_outputs_for_camera(self, camera: Cameras, obb_box: Optional[Any] = None) -> Dict[str, Tensor]:
        """The model's own outputs for `camera`, without the edit's: what the edit's still renders and the fidelity
        measures read (colour and depth), so that they do not compute the viewer's extra outputs."""
        return super().get_outputs_for_camera(camera, obb_box=obb_box)  # type: ignore[misc]


@dataclass
class SceneConfig(InstantiateConfig):
    """A scene kind's own options for the edit stages; `setup(model=...)` builds its adapter around the model."""

    _target: Type = field(default_factory=lambda: SceneAdapter)

    def positive_options(self) -> Tuple[str, ...]:
        """Integer options that must be >= 1 (the pipeline's checks refuse the others before anything loads)."""
        return ()


class SceneAdapter(ABC):
    """One scene representation (its nerfstudio model) as the edit core sees it."""

    learning_rate_options: str = "--edit-optimizers.<group>.optimizer.lr"
    """The edit stages' learning rates as a user sets them on the command line (named by the advice messages)."""
    memory_options: str = "--pipeline.render-scale 0.5 (stage 1 renders at half resolution)"
    """The options that lower an edit's GPU memory, as the out-of-memory message lists them."""

    def __init__(self, config: SceneConfig, model: Model) -> None:
        self.config, self.model = config, model

    @abstractmethod
    def render_view(self, cameras: Cameras, view: int) -> SceneRender:
        """Every pixel of `cameras[view]`, differentiably, in training mode (as the scene is trained)."""

    @abstractmethod
    def render_still(self, cameras: Cameras, view: int) -> Float[Tensor, "height width 3"]:
        """Every pixel of `cameras[view]`, without gradient, in evaluation mode (as `ns-render` renders it)."""

    @abstractmethod
    def render_surface(self, cameras: Cameras, view: int) -> SurfaceRender:
        """`render_still`'s colour and each pixel's distance along its (unit) ray to the surface, in the scene's
        coordinates: where the edit region (`pds_nerfstudio.edit.edit_region`) back-projects the views."""

    @abstractmethod
    def ray_depth(self, camera: Cameras, outputs: Dict[str, Tensor]) -> Float[Tensor, "height width"]:
        """The distance along each (unit) ray of `camera` (one camera) to the surface, from the model's `outputs`
        for it (each model has its own convention of depth)."""

    def ray_stretch(self, camera: Cameras, outputs: Dict[str, Tensor]) -> Tuple[Tensor, Tensor]:
        """Where along each ray of `camera` (one camera) its render comes from, near and far (distances along the unit
        ray), from the model's `outputs` for it. Default: the surface alone (:meth:`ray_depth` for both)."""
        depth = self.ray_depth(camera, outputs)
        return depth, depth

    def surface_render(self, camera: Cameras, outputs: Dict[str, Tensor]) -> SurfaceRender:
        """A :class:`SurfaceRender` of `camera` (one camera) from the model's still `outputs` for it."""
        return SurfaceRender(outputs["rgb"], self.ray_depth(camera, outputs), *self.ray_stretch(camera, outputs))

    def show_output(self, name: str, value: Optional[RayValue]) -> None:
        """Adds output `name` to the model's renders (the viewer's output list, `ns-render`): `value` of each pixel's
        ray and the stretch of it that the model renders there; None removes it. The model must be an
        :class:`ExtraOutputs`."""
        outputs = dict(getattr(self.model, "extra_outputs", {}))
        if value is None:
            outputs.pop(name, None)
        else:

            def output(camera: Cameras, rendered: Dict[str, Tensor]) -> Tensor:
                near, far = self.ray_stretch(camera, rendered)
                rays = camera.generate_rays(camera_indices=0, keep_shape=True)
                return value(rays.origins.to(near), rays.directions.to(near), near, far)[..., None]

            outputs[name] = output
        self.model.extra_outputs = outputs  # type: ignore[attr-defined]

    def begin_edit(self) -> List[torch.nn.Parameter]:
        """Prepares the scene for the edit stages and returns the parameters they must not train. Idempotent.

        Every scene freezes its camera optimiser: the poses stay where the reconstruction put them (the
        authors freeze them with a learning rate of 1e-30); the guidance gradient would move the cameras.
        """
        frozen = list(self.model.camera_optimizer.parameters()) if hasattr(self.model, "camera_optimizer") else []
        return freeze(frozen)

    def parts_in(self, region: PointValue) -> Optional[Bool[Tensor, "num_parts"]]:
        """Where the scene is made of parts placed in space (splats), which of them are centred in `region` (value
        > 0): the parts the edit may train (None: the scene has no parts to hold, or its options hold none). A field
        that all of space shares (nerfacto's hash grid and colour network) has no such parts."""
        return None

    def keep_source(self) -> None:
        """Keeps, in the model, what it needs to render its source scene outside an edit region later (a NeRF: a
        frozen copy of its field, in its checkpoints); called where the edit starts, on the source scene. A model
        that already keeps one (loaded with a resumed run) keeps it. Default: nothing (splats hold by part)."""

    def hold_outside(self, free: Optional[Bool[Tensor, "num_parts"]]) -> Optional[str]:
        """The edit stages from now on train only the parts marked in `free` (from :meth:`parts_in`) and hold the
        others at what they are; None trains every part again. Returns what is trained, in words (None: nothing is
        held)."""
        return None

    def hold_source_outside(self, region: Optional[PointValue]) -> Optional[str]:
        """A scene that keeps its source (:meth:`keep_source`) renders it wherever `region` is 0, blended by its value
        (None: the edited scene everywhere). Returns what the edit changes, in words (None: nothing is held).
        Default: nothing (the scene keeps no source)."""
        return None

    def fit_to_state(self, pipeline_state: Mapping[str, Tensor]) -> None:
        """Adds to the model what a checkpoint's `pipeline_state` holds beyond a fresh model's (a NeRF's kept source),
        so that it loads (resuming an edit, `ns-render`, `ns-viewer`). Default: nothing."""

    @abstractmethod
    def starting_scene_problem(self, pipeline_state: Mapping[str, Tensor]) -> Optional[str]:
        """Why a checkpoint's pipeline state cannot start an edit of this scene (None: it can)."""

    @classmethod
    @abstractmethod
    def edit_optimizers(cls) -> Dict[str, Any]:
        """The edit stages' optimisers and schedules by parameter group, in nerfstudio's `--optimizers` layout (the
        default of `--edit-optimizers`). Groups without an entry are frozen during the edit."""

    @classmethod
    def adopt_starting_checkpoint(cls, model_config: Any, pipeline_state: Mapping[str, Tensor]) -> Optional[str]:
        """Changes `model_config` so that the model it builds loads `pipeline_state`, a checkpoint of another
        method, and returns what to tell the user of it (None: nothing changed). Runs before config.yml is
        written, so that `ns-render` builds the same model."""
        return None


def freeze(parameters: List[torch.nn.Parameter]) -> List[torch.nn.Parameter]:
    """No gradient for `parameters` from now on; returns them."""
    for parameter in parameters:
        parameter.requires_grad_(False)
        parameter.grad = None
    return parameters
