"""A batch of edits: the edits file, the jobs it expands to, their run folders and whether each is done.

The edits file (YAML or TOML) lists edits and the options they share::

    output: batch_runs                  # run folders go here (default: batch_outputs/<file name>)
    shared:                             # every edit has these; an edit's own keys win
      method: pds                       # pds or pds-splat
      seeds: [0]
      options: {--pipeline.prior.model-id: stable-diffusion-v1-5/stable-diffusion-v1-5}
    edits:
      - name: clown                     # unique; default: <scene folder>-<target prompt>
        scene: data/face
        source: a photo of a man
        target: a photo of a man with a clown face
        options: {--pipeline.guidance-scale: 30}

Each (edit, seed) is a job: one `ns-train <method>` run in `<output>/<name>/<method>/seed<seed>-<attempt>/`,
started in the edits file's folder (relative paths in options are relative to it, as scenes and output are).
A job whose final checkpoint exists is done; one with checkpoints but not finished resumes from the latest.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

try:
    import tomllib
except ImportError:  # Python 3.10: YAML edits files only
    tomllib = None  # type: ignore[assignment]

METHODS = ("pds", "pds-splat")


class EditsFileError(ValueError):
    """The edits file cannot be used; the message names the edit and the key."""


@dataclass(frozen=True)
class Job:
    """One edit of one scene with one seed."""

    name: str
    scene: Path
    method: str
    source: str
    target: str
    seed: int
    options: tuple[str, ...]
    output: Path
    base: Path
    """The edits file's folder: relative paths in options are relative to it (ns-train runs there)."""

    @property
    def key(self) -> str:
        return f"{self.name}/seed{self.seed}"

    @property
    def runs(self) -> Path:
        """The folder of this job's attempts (nerfstudio's <output-dir>/<experiment>/<method>)."""
        return self.output / self.name / self.method

    def attempt_dir(self, attempt: int) -> Path:
        return self.runs / f"seed{self.seed}-{attempt}"

    def attempts(self) -> List[Path]:
        """The run folders of earlier attempts, oldest first."""
        found = [p for p in self.runs.glob(f"seed{self.seed}-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
        return sorted(found, key=lambda p: int(p.name.split("-")[-1]))

    def command(self, attempt: int, load_dir: Optional[Path]) -> List[str]:
        """The `ns-train` command of `attempt` (resuming from `load_dir` when given)."""
        binary = str(Path(sys.executable).parent / "ns-train")
        args = [binary, self.method, "--data", str(self.scene), "--output-dir", str(self.output),
                "--experiment-name", self.name, "--timestamp", f"seed{self.seed}-{attempt}",
                "--pipeline.source-prompt", self.source, "--pipeline.target-prompt", self.target,
                "--pipeline.seed", str(self.seed), "--machine.seed", str(self.seed), "--vis", "tensorboard"]  # fmt: skip
        if load_dir is not None:
            args += ["--load-dir", str(load_dir)]
        return args + list(self.options)


def finished_run(job: Job) -> Optional[Path]:
    """The attempt whose checkpoint is at the last step of its edit (None: not done)."""
    import torch

    from pds_nerfstudio.edit.stages import is_finished_edit

    for run in reversed(job.attempts()):
        checkpoints = sorted((run / "nerfstudio_models").glob("step-*.ckpt"))
        if not checkpoints:
            continue
        try:
            state = torch.load(checkpoints[-1], map_location="cpu", mmap=True, weights_only=False)
            finished = is_finished_edit(state["pipeline"], int(state["step"]))
        except Exception:  # noqa: BLE001 - a broken or foreign checkpoint is not a finished edit
            continue
        if finished:
            return run
    return None


def resume_from(job: Job) -> Optional[Path]:
    """The checkpoint folder of the latest attempt that saved one (a resumed run continues there)."""
    for run in reversed(job.attempts()):
        if list((run / "nerfstudio_models").glob("step-*.ckpt")):
            return run / "nerfstudio_models"
    return None


def read_edits_file(path: Path) -> List[Job]:
    """The jobs of an edits file; EditsFileError names what is wrong."""
    if not path.is_file():
        raise EditsFileError(f"{path}: no such file")
    if path.suffix == ".toml" and tomllib is None:
        raise EditsFileError(f"{path}: TOML edits files need Python 3.11 or newer; write it as YAML")
    toml_error = tomllib.TOMLDecodeError if tomllib is not None else ValueError
    try:
        text = path.read_text()
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (toml_error, yaml.YAMLError, UnicodeDecodeError) as error:
        raise EditsFileError(f"{path} is not valid {'TOML' if path.suffix == '.toml' else 'YAML'}: "
                             f"{' '.join(str(error).split())}") from None  # fmt: skip
    if not isinstance(data, dict) or not isinstance(data.get("edits"), list) or not data["edits"]:
        raise EditsFileError(f"{path}: needs a list `edits` of at least one edit (see `pds-batch --help`)")
    shared = data.get("shared") or {}
    output = Path(data.get("output") or Path("batch_outputs") / path.stem)
    if not output.is_absolute():
        output = (path.parent / output).resolve()
    jobs: List[Job] = []
    for index, edit in enumerate(data["edits"], start=1):
        if not isinstance(edit, dict):
            raise EditsFileError(f"{path}: edit {index} is not a mapping of keys")
        jobs += _jobs(path, index, {**shared, **edit, "options": _merge(shared.get("options"), edit.get("options"))},
                      output)  # fmt: skip
    seen: Dict[str, int] = {}
    for job in jobs:
        seen[job.key] = seen.get(job.key, 0) + 1
    twice = sorted(key for key, count in seen.items() if count > 1)
    if twice:
        raise EditsFileError(f"{path}: edits share a name and seed ({', '.join(twice)}): give each a unique `name`")
    return jobs


def _jobs(path: Path, index: int, edit: Dict[str, Any], output: Path) -> List[Job]:
    where = f"{path}: edit {index}"
    unknown = sorted(set(edit) - {"name", "scene", "method", "source", "target", "seeds", "seed", "options"})
    if unknown:
        raise EditsFileError(f"{where}: unknown keys {unknown} (name, scene, method, source, target, seeds, options)")
    for key in ("scene", "target"):
        if not str(edit.get(key) or "").strip():
            raise EditsFileError(f"{where}: `{key}` is missing")
    method = edit.get("method", "pds")
    if method not in METHODS:
        raise EditsFileError(f"{where}: method {method!r} is not one of {', '.join(METHODS)}")
    scene = Path(str(edit["scene"])).expanduser()
    scene = scene if scene.is_absolute() else (path.parent / scene).resolve()
    seeds = edit.get("seeds", [edit["seed"]] if "seed" in edit else [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise EditsFileError(f"{where}: `seeds` must be a list of integers")
    name = str(edit.get("name") or f"{scene.name}-{edit['target']}")
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")
    return [Job(name, scene, method, str(edit.get("source", "")), str(edit["target"]), seed,
                tuple(edit["options"]), output, path.parent.resolve()) for seed in seeds]  # fmt: skip


def _merge(shared: Any, own: Any) -> List[str]:
    """Command-line options from the shared and the edit's `options` (mappings or lists); the edit's win."""
    merged: Dict[str, List[str]] = {}
    for options in (shared, own):
        if options is None:
            continue
        if isinstance(options, dict):
            for key, value in options.items():
                values = value if isinstance(value, list) else [value]
                merged[str(key)] = [_text(v) for v in values]
        elif isinstance(options, list):
            key = None
            for item in map(_text, options):
                if item.startswith("--"):
                    key = item
                    merged[key] = []
                elif key is not None:
                    merged[key].append(item)
        else:
            raise EditsFileError(f"`options` must be a mapping or a list, not {type(options).__name__}")
    return [token for key, values in merged.items() for token in (key, *values)]


def _text(value: Any) -> str:
    """An option value as ns-train reads it (booleans as True / False)."""
    return str(value)
