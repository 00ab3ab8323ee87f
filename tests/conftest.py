"""Shared fixtures: isolated environments for nerfstudio's commands, tiny scenes, the face scene."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import psutil
import pytest

import waiting

if TYPE_CHECKING:
    import torch
    from nerfstudio.cameras.rays import RaySamples

REPO = Path(__file__).resolve().parents[1]
FACE_SCENE = REPO.parent / "shared" / "data" / "in2n_face"


def pytest_configure(config: pytest.Config) -> None:
    """Under `make test` (pytest-xdist, two workers) each worker, and every command it starts, uses one torch
    thread: the two workers then share two cores without oversubscribing them."""
    if os.environ.get("PYTEST_XDIST_WORKER") and "OMP_NUM_THREADS" not in os.environ:
        os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        import torch

        torch.set_num_threads(1)


LONGEST_FIRST = ("test_fidelity_script.py", "test_edit_result.py", "test_batch.py", "test_ns_commands.py",
                 "test_splat.py", "test_edit_check.py", "test_resume.py", "test_personalize.py",
                 "test_fast_encoding.py", "test_benchmark.py")  # fmt: skip
"""The files that run real trainings for minutes, longest first (as `--durations` measured them)."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest files first: `--dist loadfile --no-loadscope-reorder` (the Makefile) hands files out in this order,
    so the two workers finish together instead of one running a long file alone at the end (xdist's default
    order, most tests first, put the single-test 6-minute file last). Only the order changes; a file's tests
    keep theirs."""
    rank = {name: place for place, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def console_script(name: str) -> str:
    """Path of a console script installed beside this interpreter (ns-train, ns-render, ...)."""
    return str(Path(sys.executable).parent / name)


@pytest.fixture(scope="session")
def user_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A new user's environment: empty home and caches, no ffmpeg on PATH, no network to the hub."""
    home = tmp_path_factory.mktemp("home")
    path_dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d and not (Path(d) / "ffmpeg").exists()]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TORCH_FORCE", "PYTORCH_", "NERFSTUDIO_"))}
    env.update(
        HOME=str(home),
        XDG_CACHE_HOME=str(home / ".cache"),
        TORCH_HOME=str(home / ".cache" / "torch"),
        HF_HOME=str(home / ".cache" / "huggingface"),
        HF_HUB_OFFLINE="1",
        PATH=os.pathsep.join([str(Path(sys.executable).parent), *path_dirs]),
        PYTHONUNBUFFERED="1",
    )
    return env


def run_cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """Runs a console script; fails the test with its output when it exits non-zero (or hangs)."""
    result = waiting.run([console_script(args[0]), *args[1:]], env, cwd)
    if result.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result


def folder_snapshot(folder: Path) -> dict[str, str]:
    """Every path under `folder` with a hash of its bytes (folders hash to ''): equal snapshots, an untouched folder."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
        for path in sorted(folder.rglob("*"))
    }


def viewer_output_until_loaded(config: Path, env: dict[str, str], cwd: Path, port: int) -> str:
    """Starts `ns-viewer` on a run's config.yml and reads its output until it has loaded the checkpoint (or failed)."""
    command = [console_script("ns-viewer"), "--load-config", str(config), "--viewer.websocket-port", str(port)]
    with waiting.running(command, env, cwd, merge_output=True) as viewer:
        return waiting.Output(viewer).until_any(("Done loading checkpoint", "Traceback"), "ns-viewer loading")


@pytest.fixture(scope="session")
def tiny_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A procedural 32x32 scene of 12 views (11 train, 1 eval), read-only like a user's scene."""
    from pds_nerfstudio.synthetic.procedural_scene import make_scene

    scene = tmp_path_factory.mktemp("scenes") / "red_sphere"
    make_scene(scene, size=32, num_views=12, objects=("red sphere", "blue cube"), seed=0)
    return scene


@pytest.fixture(scope="session")
def face_scene() -> Path:
    """The captured face scene from ../shared/data; skipped where it is absent."""
    if not (FACE_SCENE / "transforms.json").exists():
        pytest.skip(f"{FACE_SCENE} is absent")
    return FACE_SCENE


@pytest.fixture(scope="module")
def offline_hub():
    """No hub access in-process: HF_HUB_OFFLINE=1, in the environment and in huggingface_hub."""
    import huggingface_hub.constants

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        yield


@pytest.fixture(scope="session")
def tiny_prior_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny randomly initialised Stable Diffusion pipeline folder (loads offline)."""
    from pds_nerfstudio.synthetic.tiny_prior import build_tiny_prior

    return build_tiny_prior(tmp_path_factory.mktemp("prior") / "tiny-sd")


def start_trainer(config, save_config: bool = False):
    """nerfstudio's Trainer of `config` on CPU, set up in-process as `ns-train` does (`save_config`: its option
    and run-folder checks, and config.yml, first)."""
    config.machine.device_type = "cpu"
    config.set_timestamp()
    if save_config:
        config.save_config()
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    return trainer


def adam_steps(trainer, group: str) -> set[int]:
    """The Adam step counts of parameter group `group`'s optimiser state (1: a fresh state after one step)."""
    return {int(state["step"]) for state in trainer.optimizers.optimizers[group].state.values()}


def tiny_pds_config(scene: Path, prior_dir: Path, **pipeline_options: object):
    """A `pds` pipeline config at test sizes: tiny nerfacto, the tiny prior, on CPU. Options of nerfacto's scene
    config (`render_chunk_size`, ...) go to `scene`, the others to the pipeline."""
    from dataclasses import fields

    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
    from pds_nerfstudio.data.datamanager import PDSDataManagerConfig
    from pds_nerfstudio.edit.pipeline import EditPipelineConfig
    from pds_nerfstudio.scenes.nerfacto_offline import OfflineNerfactoModelConfig
    from pds_nerfstudio.scenes.nerfacto import NerfactoSceneConfig
    from pds_nerfstudio.prior.stable_diffusion import DiffusionPriorConfig

    options: dict = dict(
        source_prompt="a red sphere",
        target_prompt="a blue sphere",
        reconstruction_iterations=2,
        pds_iterations=4,
        refinement_iterations=25,
        log_every=1000,
        render_chunk_size=512,  # two chunks of a 32x32 view: stage 1 defers back-propagation, as at real sizes
    )
    options.update(pipeline_options)
    scene_names = {option.name for option in fields(NerfactoSceneConfig)}
    scene_options = {name: options.pop(name) for name in list(options) if name in scene_names}
    return EditPipelineConfig(
        scene=NerfactoSceneConfig(**scene_options),
        datamanager=PDSDataManagerConfig(
            dataparser=NerfstudioDataParserConfig(data=scene), train_num_rays_per_batch=128, eval_num_rays_per_batch=128
        ),
        model=OfflineNerfactoModelConfig(
            eval_num_rays_per_chunk=1024,
            num_nerf_samples_per_ray=16,
            num_proposal_samples_per_ray=(16, 8),
            hidden_dim=16,
            hidden_dim_color=16,
            num_levels=4,
            log2_hashmap_size=12,
        ),
        prior=DiffusionPriorConfig(model_id=str(prior_dir), dtype="fp32", device="cpu"),
        **options,
    )


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny randomly initialised CLIP (transformers CLIPModel, tokenizer, image processor) folder."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    from pds_nerfstudio.synthetic.tiny_prior import _learn_merges, tokenizer_vocab

    folder = tmp_path_factory.mktemp("clip") / "tiny-clip"
    vocab = tokenizer_vocab()
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, eos_token_id=vocab["<|endoftext|>"],
                         bos_token_id=vocab["<|startoftext|>"], pad_token_id=vocab["<|endoftext|>"]),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                           num_attention_heads=4),
        projection_dim=16,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        CLIPModel(config).save_pretrained(folder)
    CLIPTokenizer(vocab=dict(vocab), merges=list(_learn_merges()), model_max_length=77).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.fixture
def left_behind() -> Iterator[Callable[[], list[psutil.Process]]]:
    """The test process adopts every orphan of what it starts (Linux's child subreaper), so that any process
    a batch leaves behind, a raylet, a Ray worker or an ns-train, stays findable: `left_behind()` lists them."""
    from pds_nerfstudio.batch.stopping import alive, become_subreaper

    if not become_subreaper():
        pytest.skip("needs Linux's PR_SET_CHILD_SUBREAPER")
    before = {p.pid for p in psutil.Process().children(recursive=True)}

    def started_since() -> list[psutil.Process]:
        return alive(p for p in psutil.Process().children(recursive=True) if p.pid not in before)

    try:
        yield started_since
    finally:
        for process in started_since():
            process.kill()
        become_subreaper(on=False)


def described(processes: list[psutil.Process]) -> str:
    lines = []
    for process in processes:
        try:
            lines.append(f"{process.pid} {' '.join(process.cmdline())[:160]}")
        except psutil.Error:
            continue
    return "\n".join(lines)


def samples_at(points: torch.Tensor) -> RaySamples:
    """One sample at each of `points` (n, 3), of a ray along +z through it."""
    import torch
    from nerfstudio.cameras.rays import Frustums, RaySamples

    count = len(points)
    frustums = Frustums(
        origins=points[:, None] - torch.tensor([0.0, 0.0, 0.5]), directions=torch.tensor([[[0.0, 0.0, 1.0]]]).expand(count, 1, 3),
        starts=torch.full((count, 1, 1), 0.49), ends=torch.full((count, 1, 1), 0.51), pixel_area=torch.full((count, 1, 1), 1e-4),
    )  # fmt: skip
    return RaySamples(frustums=frustums, camera_indices=torch.zeros(count, 1, 1, dtype=torch.long))
