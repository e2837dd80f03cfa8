"""``diffusers``: text-to-image pipelines through Hugging Face diffusers (the ``image`` extra).

The model is a local diffusers pipeline folder (the one ``save_pretrained`` writes, with a
``model_index.json``); nothing is downloaded. The prompt is the text to draw; the run writes one
``image.png`` into the job's folder, with its parameters in PNG text chunks, and streams
``step i/n`` lines while it denoises.

Params: ``width`` and ``height`` (pixels, multiples of 8; default the pipeline's own size),
``steps`` (default 20), ``guidance`` (classifier-free guidance scale, default 7.5), ``seed``
(default a random one; always reported, and the same seed gives the same image on one machine),
``negative_prompt``, and ``fail`` (raise with this message instead, as ``echo`` does).

Option (models.toml): ``device`` (``cpu``, ``cuda``, ``cuda:1``, ``mps`` ...); the default is
CUDA in float16 where torch finds a GPU, else the CPU in float32. The safety checker, where a
pipeline has one, is not loaded.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from .base import ExecutorError, Job, ModelSpec, Output

INSTALL_HINT = "diffusers is not installed: pip install 'syncq[image]'"
DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 7.5
# Far more than anyone asks for; DDIM with steps_offset=1 already fails at 1000 (an IndexError).
MAX_STEPS = 500
MAX_SIDE = 8192  # pixels; far past what any pipeline is trained for, short of a silly allocation
# Components a pipeline may name that we never load, so their folders need not be there.
SKIPPED = ("safety_checker",)


def discover(folder: Path) -> list[ModelSpec]:
    """Pipeline folders directly inside ``folder`` (those with a ``model_index.json``), each
    served under its folder's name."""
    if not folder.is_dir():
        return []
    return [
        ModelSpec(name=sub.name, backend="diffusers", path=str(sub))
        for sub in sorted(folder.iterdir())
        if (sub / "model_index.json").is_file()
    ]


def check_folder(path: Path) -> dict[str, Any]:
    """Read a pipeline folder's ``model_index.json`` and check that every component it names
    has its subfolder. Raises ``ExecutorError`` saying what is missing.

    diffusers' own errors are unclear here (a missing ``unet/`` reads "no file named
    config.json found in directory PIPELINE") or absent (a missing ``tokenizer/`` loads, as
    None, and fails on the first prompt).
    """
    if not path.is_dir():
        raise ExecutorError(f"pipeline folder {path} does not exist")
    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise ExecutorError(f"pipeline folder {path} has no model_index.json")
    try:
        index = json.loads(index_file.read_text())
    except (ValueError, OSError) as exc:
        raise ExecutorError(f"pipeline folder {path} has an unreadable model_index.json: {exc}") from exc
    if not isinstance(index, dict):
        raise ExecutorError(f"pipeline folder {path} has a model_index.json that is not an object")
    for name in components(index):
        if name not in SKIPPED and not (path / name).is_dir():
            raise ExecutorError(
                f"pipeline folder {path} is incomplete: component {name!r} is missing (no {path / name}/)"
            )
    return index


def components(index: Mapping[str, Any]) -> list[str]:
    """The components a ``model_index.json`` names: ``"unet": ["diffusers", "UNet2DConditionModel"]``;
    ``[null, null]`` marks one the pipeline goes without, and ``_``-keys are metadata."""
    return [
        name
        for name, value in index.items()
        if not name.startswith("_") and isinstance(value, list) and value and value[0] is not None
    ]


class DiffusersExecutor:
    """One diffusers pipeline."""

    def __init__(self) -> None:
        self.pipe: Any = None
        self.name = ""
        self.size = (512, 512)  # (width, height) when the prompt gives none

    def load(self, spec: ModelSpec) -> None:
        """Load the pipeline folder ``spec.path``. Raises ``ExecutorError`` if diffusers is not
        installed, the folder is incomplete, or a component fails to load."""
        path = Path(spec.path).expanduser()
        index = check_folder(path)  # before the imports, which take seconds
        # The worker process is ours alone: no library may reach for the hub, and tqdm bars
        # (transformers reads this one at import) have no place in the node's log.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        try:
            import torch
            from diffusers import DiffusionPipeline
            from diffusers.utils import logging as diffusers_logging
        except ImportError as exc:
            raise ExecutorError(INSTALL_HINT) from exc
        device = str(spec.options.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"))
        kwargs: dict[str, Any] = {"local_files_only": True}
        if device.startswith("cuda"):
            kwargs[_dtype_keyword()] = torch.float16
        if "safety_checker" in components(index):
            kwargs |= {"safety_checker": None, "requires_safety_checker": False}
        diffusers_logging.disable_progress_bar()  # diffusers' own bars ignore the variable
        try:
            pipe = DiffusionPipeline.from_pretrained(str(path), **kwargs).to(device)
        except Exception as exc:  # OSError, ValueError, SafetensorError, AssertionError (no CUDA) ...
            raise ExecutorError(f"cannot load pipeline folder {path}: {type(exc).__name__}: {exc}") from exc
        pipe.set_progress_bar_config(disable=True)
        self.pipe, self.name, self.size = pipe, spec.name, _default_size(pipe)

    def run(self, job: Job, emit: Callable[[str], None], cancelled: Callable[[], bool]) -> Output:
        """Draw one image into ``job.out_dir/image.png``, emitting ``step i/n`` lines; stops
        early when cancelled (with no image). Raises ``ExecutorError`` for bad params."""
        import torch

        params = job.params
        if params.get("fail"):
            raise ExecutorError(str(params["fail"]))
        width, height = self._size(params)
        steps = _whole(params, "steps", DEFAULT_STEPS, low=1, high=MAX_STEPS)
        guidance = _number(params, "guidance", DEFAULT_GUIDANCE)
        seed = _whole(params, "seed", secrets.randbelow(2**32), low=0, high=2**64 - 1)
        negative = str(params.get("negative_prompt") or "")
        # Only when given: some pipelines (Flux's, for one) have no negative prompt.
        extra = {"negative_prompt": negative} if negative else {}
        generator = torch.Generator(device=self.pipe.device).manual_seed(seed)
        try:
            image = self.pipe(
                job.input,
                **extra,
                width=width,
                height=height,
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=generator,
                callback_on_step_end=_progress(emit, cancelled, steps),
            ).images[0]
        except _Stopped:
            return Output(text="cancelled", usage={"seed": seed})
        info = {"prompt": job.input, "seed": seed, "steps": steps, "guidance": guidance}
        info |= {"width": width, "height": height, "model": self.name, **extra}
        out = _save_png(image, Path(job.out_dir) / "image.png", info)
        return Output(
            text=f"{width}x{height} image, {steps} steps, seed {seed}",
            usage={"width": width, "height": height, "steps": steps, "seed": seed, "guidance": guidance},
            files=(str(out),),
        )

    def _size(self, params: Mapping[str, Any]) -> tuple[int, int]:
        width = _whole(params, "width", self.size[0], low=8, high=MAX_SIDE)
        height = _whole(params, "height", self.size[1], low=8, high=MAX_SIDE)
        if width % 8 or height % 8:
            raise ExecutorError(f"width and height must be multiples of 8, not {width}x{height}")
        return width, height

    def unload(self) -> None:
        """Free the pipeline (ending the worker process frees it for certain)."""
        self.pipe = None


class _Stopped(Exception):
    """Raised from the step callback to end a cancelled run at once."""


def _progress(
    emit: Callable[[str], None], cancelled: Callable[[], bool], steps: int
) -> Callable[..., dict[str, Any]]:
    """The ``callback_on_step_end`` of a run: a ``step i/n`` line per step, and a stop.

    diffusers' own stop (``pipe._interrupt = True``) skips the remaining steps but still decodes
    the latents with the VAE, which can outlast the manager's cancel grace on a CPU and get the
    worker killed; raising ends the call at once, and a cancelled run's image is dropped anyway.
    """

    def on_step(pipe: Any, i: int, _t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        # num_timesteps differs from steps for second-order schedulers (Heun, DPM2).
        emit(f"step {i + 1}/{getattr(pipe, 'num_timesteps', None) or steps}\n")
        if cancelled():
            raise _Stopped
        return tensors

    return on_step


def _save_png(image: Any, path: Path, info: Mapping[str, Any]) -> Path:
    """Write a PIL image as PNG with ``info`` as text chunks."""
    from PIL.PngImagePlugin import PngInfo

    chunks = PngInfo()
    for key, value in info.items():
        chunks.add_text(key, str(value))
    image.save(path, format="PNG", pnginfo=chunks)
    return path


def _default_size(pipe: Any) -> tuple[int, int]:
    """The pipeline's own (width, height): its denoiser's sample size times the VAE's scale."""
    unet = getattr(pipe, "unet", None)
    sample = getattr(pipe, "default_sample_size", None) or (unet.config.sample_size if unet else 64)
    height, width = (sample, sample) if isinstance(sample, int) else sample
    scale = getattr(pipe, "vae_scale_factor", 8)
    return width * scale, height * scale


def _dtype_keyword() -> str:
    """diffusers 0.42 renamed ``torch_dtype`` to ``dtype`` (the old name warns); older ones
    know only ``torch_dtype``."""
    major, minor = (int(part) for part in metadata.version("diffusers").split(".")[:2])
    return "dtype" if (major, minor) >= (0, 42) else "torch_dtype"


def _whole(params: Mapping[str, Any], key: str, default: int, *, low: int, high: int) -> int:
    value = params.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ExecutorError(f"{key} must be a whole number from {low} to {high}, not {value!r}")
    return value


def _number(params: Mapping[str, Any], key: str, default: float) -> float:
    value = params.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ExecutorError(f"{key} must be a number, not {value!r}")
    return float(value)
