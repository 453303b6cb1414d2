"""The Generator deployment's class, without Serve: packages come from a folder, not MLflow.

Serve's multiplexer needs a replica, so a dict stands in for its cache; everything else (id
parsing, package loading, sampling, batching, streaming, cancellation) is the real code.
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
from models.gpt import decode, encode
from models.refs import ModelVersionInfo
from models.weights import save_weights
from models.zoo import architecture, build_model
from serve_apps import generator as generator_module
from serve_apps._private import decode_batch
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


def forwards(gen: Generator, model_id: str) -> int:
    """Model forwards the version's decode loop has run (batched steps count once)."""
    return gen.cache[model_id].lm.decoder.batch.forwards


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

    def scripted(logits, *args, **kwargs):
        return torch.tensor([[next(script)]])

    monkeypatch.setattr(decode_batch, "sample", scripted)
    assert stream(make_generator("tiny:1"), tokens=12) == ["a", "ñ", "€", "🙂", "\ufffd"]


async def until(condition, timeout_s: float = 30.0) -> None:
    """Poll ``condition`` on the event loop until it holds (the decode loop runs meanwhile)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def pieces_of(gen: Generator, prompt: str, tokens: int, seed: int, top_k=None) -> str:
    return "".join([p async for p in gen.generate(prompt, tokens, 1.0, top_k, seed)])


def test_cancelling_the_consumer_stops_its_row(registry, make_generator, caplog):
    registry.add("ascii", 1, "gpt", ASCII)
    gen = make_generator("ascii:1")
    pieces: list[str] = []

    async def main() -> None:
        two = asyncio.Event()

        async def consume() -> None:
            async for piece in gen.generate("Hi", 200, 1.0, None, 0):
                pieces.append(piece)
                if len(pieces) == 2:
                    two.set()

        task = asyncio.create_task(consume())
        await two.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        batch = gen.cache["ascii:1"].lm.decoder.batch
        await until(lambda: not batch.rows)  # it left the batch at the next step

    with caplog.at_level(logging.INFO, logger="ray.serve"):
        asyncio.run(main())
    # Tokens are computed ahead of the consumer, but the row stops a step after it left.
    assert len(pieces) == 2 and forwards(gen, "ascii:1") < 50
    assert "cancelled after 2 tokens" in caplog.text


def test_a_cancellation_thrown_at_a_yield_stops_it_too(registry, make_generator, caplog):
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
        batch = gen.cache["ascii:1"].lm.decoder.batch
        await until(lambda: not batch.rows)

    with caplog.at_level(logging.INFO, logger="ray.serve"):
        asyncio.run(main())
    assert forwards(gen, "ascii:1") < 50
    assert "cancelled after 2 tokens" in caplog.text


PROMPTS = [("Hi", 11), ("Once upon a time", 12), ("def main(", 13), ("x", 14)]


@pytest.mark.parametrize("top_k", [1, None], ids=["greedy", "seeded"])
def test_concurrent_streams_share_each_step_and_get_the_tokens_they_get_alone(
    registry, make_generator, top_k
):
    registry.add("ascii", 1, "gpt", ASCII)
    gen = make_generator("ascii:1")
    tokens = 24
    alone = [asyncio.run(pieces_of(gen, p, tokens, seed, top_k)) for p, seed in PROMPTS]
    assert forwards(gen, "ascii:1") == len(PROMPTS) * tokens  # alone: a forward per token
    before = forwards(gen, "ascii:1")

    async def together() -> list[str]:
        return await asyncio.gather(*(pieces_of(gen, p, tokens, s, top_k) for p, s in PROMPTS))

    assert asyncio.run(together()) == alone
    # Together: each prompt prefilled (one forward each, the first token), then one batched
    # forward per further token for all four.
    assert forwards(gen, "ascii:1") - before == len(PROMPTS) + tokens - 1


def test_a_stream_joins_midway_and_one_cancelled_leaves_the_others_running(
    registry, make_generator
):
    registry.add("ascii", 1, "gpt", ASCII)
    gen = make_generator("ascii:1")
    alone = {p: asyncio.run(pieces_of(gen, p, 40, seed)) for p, seed in PROMPTS[:3]}

    async def main() -> dict[str, str]:
        got: dict[str, list[str]] = {p: [] for p, _ in PROMPTS[:3]}
        ten = asyncio.Event()

        async def consume(prompt: str, seed: int, cancel_after: int | None = None) -> None:
            async for piece in gen.generate(prompt, 40, 1.0, None, seed):
                got[prompt].append(piece)
                if len(got[prompt]) == 10:
                    ten.set()
                if len(got[prompt]) == cancel_after:
                    raise asyncio.CancelledError

        first = asyncio.create_task(consume(*PROMPTS[0]))
        await ten.wait()  # the first is 10 tokens in when the others join
        late = [asyncio.create_task(consume(*PROMPTS[1])), consume(*PROMPTS[2], cancel_after=5)]
        results = await asyncio.gather(first, *late, return_exceptions=True)
        assert isinstance(results[2], asyncio.CancelledError)
        return {p: "".join(pieces) for p, pieces in got.items()}

    got = asyncio.run(main())
    assert got[PROMPTS[0][0]] == alone[PROMPTS[0][0]]
    assert got[PROMPTS[1][0]] == alone[PROMPTS[1][0]]
    assert got[PROMPTS[2][0]] == alone[PROMPTS[2][0]][:5]


def test_without_the_kv_cache_the_text_is_the_same(registry, make_generator):
    registry.add("tiny", 1, "gpt", {"preset": "tiny"})  # block_size 64: 40 tokens past it
    cached = stream(make_generator("tiny:1"), prompt="x" * 50, tokens=54, seed=9)
    assert (
        stream(make_generator("tiny:1", kv_cache=False), prompt="x" * 50, tokens=54, seed=9)
        == cached
    )


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


def test_a_stream_runs_at_most_a_few_tokens_ahead_of_its_consumer(registry, make_generator):
    registry.add("ascii", 1, "gpt", ASCII)
    gen = make_generator("ascii:1")

    async def main() -> None:
        agen = gen.generate("Hi", 200, 1.0, None, 0)
        await agen.__anext__()
        await agen.__anext__()  # then the consumer stalls, without leaving
        await until(lambda: forwards(gen, "ascii:1") >= 2 + 8)  # 8 ahead: DecodeLoop's default
        await asyncio.sleep(0.3)  # a loop that did not pause would run ~100 more steps here
        assert forwards(gen, "ascii:1") <= 2 + 8 + 1  # + the step in flight when it paused
        await agen.aclose()

    asyncio.run(main())
