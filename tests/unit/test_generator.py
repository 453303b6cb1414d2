"""The Generator deployment's class, without Serve: packages come from a folder, not MLflow.

Serve's multiplexer needs a replica, so a dict stands in for its cache; everything else (id
parsing, package loading, sampling, streaming, cancellation) is the real code.
"""

import asyncio
import logging
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from models import package
from models.exceptions import IncompatibleModel, InvalidModelRef, ModelNotFound
from models.gpt import GPT, decode, encode
from models.refs import ModelVersionInfo
from models.weights import save_weights
from models.zoo import architecture, build_model
from serve_apps import generator as generator_module
from serve_apps.generator import Generator
from serve_apps.schemas import GenerateRequest, GeneratorConfig

ASCII = {"preset": "tiny", "vocab_size": 128}  # every token one character: one piece per token


class FolderRegistry:
    """``Registry.get`` and ``Registry.fetch`` over packages written to local folders."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def add(self, name: str, version: int, arch: str, options: dict) -> torch.nn.Module:
        folder = self.root / f"{name}-{version}"
        folder.mkdir(parents=True)
        model = build_model(arch, **options).eval()
        save_weights(model, folder / package.WEIGHTS_FILE)
        signature = architecture(arch).signature_for(options)
        package.PackageConfig(arch, signature, options, {}).write(folder)
        return model

    def get(self, name: str, version: int) -> ModelVersionInfo:
        folder = self.root / f"{name}-{version}"
        if not folder.is_dir():
            raise ModelNotFound(f"Model {name!r} has no version {version}.", model=name)
        return ModelVersionInfo(name, version, str(folder), None, "", {}, ())

    def fetch(self, info: ModelVersionInfo, dest: Path) -> Path:
        return Path(shutil.copytree(info.source, dest / "model"))


@pytest.fixture
def registry(tmp_path: Path) -> FolderRegistry:
    torch.manual_seed(0)
    return FolderRegistry(tmp_path)


@pytest.fixture
def make_generator(registry, monkeypatch: pytest.MonkeyPatch):
    """``make_generator("tiny:1", max_new_tokens=8)``: a Generator answering for that id."""
    made = []

    def make(model_id: str, **user_config) -> Generator:
        monkeypatch.setattr(generator_module.serve, "get_multiplexed_model_id", lambda: model_id)
        gen = Generator.func_or_class(registry=registry)
        gen.reconfigure(user_config)
        cache: dict[str, object] = {}

        async def multiplexed(model_id: str):  # Serve's LRU cache, minus the replica
            if model_id not in cache:
                cache[model_id] = await gen._load(model_id)
            return cache[model_id]

        gen._multiplexed, gen.cache = multiplexed, cache
        made.append(gen)
        return gen

    yield make
    for gen in made:
        gen._forwards.shutdown(wait=True)


def stream(gen: Generator, prompt="Hi", tokens=16, temperature=1.0, top_k=None, seed=0):
    async def collect() -> list[str]:
        return [piece async for piece in gen.generate(prompt, tokens, temperature, top_k, seed)]

    return asyncio.run(collect())


@pytest.fixture
def forwards(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts sampling steps (one forward each) as they start."""
    calls: list[int] = []
    step = GPT.next_token

    def counted(self, *args, **kwargs):
        calls.append(1)
        return step(self, *args, **kwargs)

    monkeypatch.setattr(GPT, "next_token", counted)
    return calls


def test_pieces_concatenate_to_the_decoded_sample_of_gpt_generate(registry, make_generator):
    model = registry.add("tiny", 1, "gpt", {"preset": "tiny"})
    gen = make_generator("tiny:1")
    pieces = stream(gen, prompt="héllo", tokens=40, top_k=50, seed=7)

    prompt = torch.tensor([encode("héllo")])
    expected = model.generate(prompt, 40, top_k=50, generator=torch.Generator().manual_seed(7))
    assert "".join(pieces) == decode(expected[0, prompt.shape[1] :].tolist())
    assert all(pieces)  # never an empty piece


def test_same_seed_same_text(registry, make_generator):
    registry.add("tiny", 1, "gpt", {"preset": "tiny"})
    gen = make_generator("tiny:1")
    first, again = stream(gen, seed=3, tokens=32), stream(gen, seed=3, tokens=32)
    assert first == again
    assert "".join(stream(gen, seed=4, tokens=32)) != "".join(first)


def test_limits_are_enforced_with_messages_that_name_the_fix(registry, make_generator):
    registry.add("ascii", 1, "gpt", ASCII)
    gen = make_generator("ascii:1", max_new_tokens=8, max_prompt_chars=10)
    assert len(stream(gen, tokens=8)) == 8  # ASCII: one character, one piece per token
    with pytest.raises(ValidationError, match=r"9 asked; this server samples at most 8"):
        stream(gen, tokens=9)
    with pytest.raises(ValidationError, match=r"11 characters; this server takes at most 10"):
        stream(gen, prompt="x" * 11)
    for bad in ({"temperature": 0.0}, {"temperature": float("nan")}, {"prompt": ""}):
        with pytest.raises(ValidationError):
            stream(gen, **bad)


def test_a_prompt_longer_than_the_block_is_cut_to_its_last_block_size_tokens(
    registry, make_generator
):
    registry.add("ascii", 1, "gpt", ASCII)  # block_size 64
    gen = make_generator("ascii:1")
    prompt = "".join(chr(32 + i % 90) for i in range(200))
    assert stream(gen, prompt=prompt, seed=5) == stream(gen, prompt=prompt[-64:], seed=5)


def test_generate_request_schema():
    body = GenerateRequest.model_validate_json('{"prompt": "Hi"}')
    assert (body.max_new_tokens, body.temperature, body.top_k, body.seed) == (64, 1.0, None, None)
    for bad in ('{"prompt": "Hi", "stream": true}', '{"prompt": "Hi", "max_new_tokens": "5"}'):
        with pytest.raises(ValidationError):
            GenerateRequest.model_validate_json(bad)
    properties = GenerateRequest.model_json_schema()["properties"]
    assert all(field.get("description") for field in properties.values())
    with pytest.raises(ValidationError, match="max_models_per_replica"):
        GeneratorConfig(max_models_per_replica=0)


def test_utf8_pieces_are_whole_characters_and_the_rest_is_flushed(
    registry, make_generator, monkeypatch: pytest.MonkeyPatch
):
    registry.add("tiny", 1, "gpt", {"preset": "tiny"})
    script = iter(list("añ€🙂".encode()) + list("🙂".encode())[:2])  # ends mid-character

    def scripted(self, idx, *args, **kwargs):
        return torch.tensor([[next(script)]])

    monkeypatch.setattr(GPT, "next_token", scripted)
    assert stream(make_generator("tiny:1"), tokens=12) == ["a", "ñ", "€", "🙂", "\ufffd"]


def test_cancelling_the_consumer_stops_the_forwards(registry, make_generator, forwards, caplog):
    registry.add("ascii", 1, "gpt", ASCII)
    gen = make_generator("ascii:1")
    pieces: list[str] = []

    async def main() -> None:
        two = asyncio.Event()

        async def consume() -> None:
            async for piece in gen.generate("Hi", 200, 1.0, None, 0):
                pieces.append(piece)
                if len(pieces) == 2:
                    two.set()  # the generator's next await is its third forward

        task = asyncio.create_task(consume())
        await two.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with caplog.at_level(logging.INFO, logger="ray.serve"):
        asyncio.run(main())
    gen._forwards.shutdown(wait=True)  # the forward that was running when cancelled ends
    assert len(pieces) == 2 and len(forwards) <= 3
    assert "cancelled after 2 tokens" in caplog.text


def test_a_cancellation_thrown_at_a_yield_stops_it_too(registry, make_generator, forwards, caplog):
    # What Serve does when it closes a stream while the generator waits at a yield.
    registry.add("ascii", 1, "gpt", ASCII)
    gen = make_generator("ascii:1")

    async def main() -> None:
        agen = gen.generate("Hi", 200, 1.0, None, 0)
        await agen.__anext__()
        await agen.__anext__()
        with pytest.raises(asyncio.CancelledError):
            await agen.athrow(asyncio.CancelledError())
        with pytest.raises(StopAsyncIteration):
            await agen.__anext__()

    with caplog.at_level(logging.INFO, logger="ray.serve"):
        asyncio.run(main())
    assert len(forwards) == 2
    assert "cancelled after 2 tokens" in caplog.text


def test_versions_that_are_not_language_models_or_missing_or_misnamed_are_refused(
    registry, make_generator
):
    registry.add("digits", 1, "digits_cnn", {})
    with pytest.raises(IncompatibleModel, match="'digits_cnn' model, not a language model") as err:
        stream(make_generator("digits:1"))
    copy = pickle.loads(pickle.dumps(err.value))  # crosses actors intact
    assert type(copy) is IncompatibleModel and copy.context["architecture"] == "digits_cnn"
    with pytest.raises(ModelNotFound):
        stream(make_generator("nope:1"))
    for bad in ("", "tiny", "tiny:0", "tiny:01", "tiny:latest", "../etc:1", "a:b:1"):
        with pytest.raises(InvalidModelRef):
            stream(make_generator(bad))


def test_loaded_lists_the_versions_in_memory_and_health_check_passes(registry, make_generator):
    registry.add("tiny", 1, "gpt", {"preset": "tiny"})
    gen = make_generator("tiny:1")
    assert gen.loaded() == []
    stream(gen, tokens=2)
    assert gen.loaded() == ["tiny:1"]
    gen.cache.clear()  # evicted, and no stream holds it
    assert gen.loaded() == []
    asyncio.run(gen.check_health())


def test_max_models_per_replica_is_kept_once_the_multiplexer_exists(make_generator, caplog):
    gen = make_generator("tiny:1", max_models_per_replica=3)
    gen.reconfigure({"max_models_per_replica": 5, "threads": 2})
    assert (gen.config.max_models_per_replica, gen.config.threads) == (3, 2)
    assert "applies to replicas started from now on" in caplog.text
