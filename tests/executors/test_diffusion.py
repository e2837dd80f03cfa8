"""The diffusers executor on a tiny random-weight pipeline, through real worker processes."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import tiny_pipeline
from syncq.executors.base import ExecutorError, Job, ModelSpec, Output
from syncq.executors.diffusion import DiffusersExecutor, discover
from syncq.executors.manager import Cancelled, ModelManager

pytestmark = pytest.mark.model
pytest.importorskip("diffusers", reason="the image extra is not installed")
Image = pytest.importorskip("PIL.Image")  # diffusers brings Pillow


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny pipeline, built once for the module."""
    return tiny_pipeline.build(tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="module")
def broken(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Copies of the tiny pipeline, each missing a part, by name."""
    root = tmp_path_factory.mktemp("broken")
    folders = {name: Path(shutil.copytree(tiny, root / name)) for name in ("no-unet", "no-index")}
    shutil.rmtree(folders["no-unet"] / "unet")
    (folders["no-index"] / "model_index.json").unlink()
    return folders


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """One event loop for the module, so that one worker serves every test."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def manager(loop: asyncio.AbstractEventLoop, tiny: Path, broken: dict[str, Path]) -> Iterator[ModelManager]:
    specs = {"tiny-sd": ModelSpec(name="tiny-sd", backend="diffusers", path=str(tiny))}
    for name, folder in broken.items():
        specs[name] = ModelSpec(name=name, backend="diffusers", path=str(folder))
    manager = ModelManager(specs)
    yield manager

    async def close() -> None:  # the worker's pipe is watched by the running loop
        manager.close()

    loop.run_until_complete(close())


def draw(
    loop: asyncio.AbstractEventLoop, manager: ModelManager, out: Path, model: str = "tiny-sd", **params
) -> tuple[Output, list[str]]:
    out.mkdir(parents=True, exist_ok=True)
    chunks: list[str] = []
    job = Job(prompt_id="p", input="a red fox", params=params, out_dir=str(out))
    return loop.run_until_complete(manager.run(model, job, chunks.append, asyncio.Event())), chunks


def pixels(out: Output) -> bytes:
    with Image.open(out.files[0]) as image:
        return image.tobytes()


def test_a_prompt_makes_a_png_of_the_asked_size_and_streams_its_steps(loop, manager, tmp_path) -> None:
    out, chunks = draw(loop, manager, tmp_path, width=64, height=48, steps=4, seed=7)
    assert chunks == [f"step {i}/4\n" for i in range(1, 5)]
    assert out.files == (str(tmp_path / "image.png"),)
    assert out.text == "64x48 image, 4 steps, seed 7"
    assert out.usage == {"width": 64, "height": 48, "steps": 4, "seed": 7, "guidance": 7.5}
    with Image.open(out.files[0]) as image:
        assert image.format == "PNG" and image.size == (64, 48)
        assert image.text == {
            "prompt": "a red fox",
            "seed": "7",
            "steps": "4",
            "guidance": "7.5",
            "width": "64",
            "height": "48",
            "model": "tiny-sd",
        }


def test_without_a_size_or_seed_the_pipeline_default_and_a_random_seed_are_used(
    loop, manager, tmp_path
) -> None:
    out, _ = draw(loop, manager, tmp_path, steps=2, negative_prompt="blurry")
    assert (out.usage["width"], out.usage["height"]) == (64, 64)  # the unet's 8 latent pixels x 8
    with Image.open(out.files[0]) as image:
        assert image.size == (64, 64)
        assert image.text["seed"] == str(out.usage["seed"]) and image.text["negative_prompt"] == "blurry"


def test_one_seed_gives_one_image_and_another_seed_another(loop, manager, tmp_path) -> None:
    size = {"width": 64, "height": 48, "steps": 4}
    first, _ = draw(loop, manager, tmp_path / "a", seed=7, **size)
    again, _ = draw(loop, manager, tmp_path / "b", seed=7, **size)
    other, _ = draw(loop, manager, tmp_path / "c", seed=8, **size)
    assert pixels(first) == pixels(again)
    assert pixels(first) != pixels(other)


def test_a_size_not_a_multiple_of_8_fails_the_job_and_the_worker_stays(loop, manager, tmp_path) -> None:
    # Loaded first, here: the manager is shared, and which test of this module runs first on a
    # pytest-xdist worker depends on how the suite is split.
    draw(loop, manager, tmp_path / "warm", width=64, height=48, steps=2, seed=1)
    loads = manager.loads
    with pytest.raises(ExecutorError, match="multiples of 8, not 60x48"):
        draw(loop, manager, tmp_path, width=60, height=48, steps=2)
    with pytest.raises(ExecutorError, match=r"^boom$"):
        draw(loop, manager, tmp_path, fail="boom")
    assert [p.name for p in tmp_path.iterdir()] == ["warm"]  # the failed jobs left no file
    out, _ = draw(loop, manager, tmp_path, width=64, height=48, steps=2, seed=1)
    assert out.files and manager.loads == loads  # the same worker, still loaded


def test_cancel_stops_the_denoising_and_keeps_the_worker(loop, manager, tmp_path) -> None:
    async def scenario() -> None:
        cancel = asyncio.Event()
        job = Job(prompt_id="p", input="x", params={"steps": 500}, out_dir=str(tmp_path))
        with pytest.raises(Cancelled, match=r"^cancelled$"):  # not "(worker stopped)"
            await manager.run("tiny-sd", job, lambda chunk: cancel.set(), cancel)

    draw(loop, manager, tmp_path / "warm", width=16, height=16, steps=1)  # loaded, when run alone too
    loads = manager.loads
    loop.run_until_complete(scenario())
    assert manager.loaded("tiny-sd") and manager.loads == loads
    assert [p.name for p in tmp_path.iterdir()] == ["warm"]  # the cancelled run wrote nothing


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("no-unet", "pipeline folder {0} is incomplete: component 'unet' is missing (no {0}/unet/)"),
        ("no-index", "pipeline folder {0} has no model_index.json"),
    ],
)
def test_an_incomplete_pipeline_folder_fails_to_load_saying_what_is_missing(
    loop, manager, broken, tmp_path, model, message
) -> None:
    expected = f"cannot load model {model}: " + message.format(broken[model])
    with pytest.raises(ExecutorError, match=f"^{re.escape(expected)}$"):
        draw(loop, manager, tmp_path, model=model)
    assert not manager.loaded(model)


# In this process (diffusers is imported already, for building the pipeline): a worker would
# spend seconds importing it again.
@pytest.fixture
def executor(monkeypatch: pytest.MonkeyPatch) -> Iterator[DiffusersExecutor]:
    for name in ("HF_HUB_OFFLINE", "HF_HUB_DISABLE_PROGRESS_BARS"):  # load() sets them; keep pytest's
        monkeypatch.setenv(name, "1")
    executor = DiffusersExecutor()
    yield executor
    executor.unload()


def test_a_torn_weights_file_fails_to_load_naming_the_file(executor, tiny, tmp_path) -> None:
    folder = Path(shutil.copytree(tiny, tmp_path / "torn"))
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100_000])
    expected = f"cannot load pipeline folder {folder}: OSError: Unable to load weights from checkpoint file"
    with pytest.raises(ExecutorError, match=re.escape(expected) + ".*" + re.escape(str(weights))):
        executor.load(ModelSpec(name="torn", backend="diffusers", path=str(folder)))


def test_a_safety_checker_is_never_loaded_so_its_folder_may_be_missing(executor, tiny, tmp_path) -> None:
    folder = Path(shutil.copytree(tiny, tmp_path / "checked"))
    index = json.loads((folder / "model_index.json").read_text())
    index["safety_checker"] = ["stable_diffusion", "StableDiffusionSafetyChecker"]
    (folder / "model_index.json").write_text(json.dumps(index))
    executor.load(ModelSpec(name="checked", backend="diffusers", path=str(folder)))
    assert executor.pipe.safety_checker is None


def test_discover_finds_the_pipeline_folders_in_a_folder(tiny: Path) -> None:
    (tiny.parent / "notes").mkdir(exist_ok=True)
    (tiny.parent / "readme.txt").write_text("not a model")
    assert discover(tiny.parent) == [ModelSpec(name="tiny-sd", backend="diffusers", path=str(tiny))]
    assert discover(tiny.parent / "absent") == []
