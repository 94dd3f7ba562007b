"""AsyncEngine's failure contract on a tiny random model: a request cancelled while being admitted
is aborted (and only it), a dying engine thread settles every pending admission, stream and call,
and shutdown() ends every open stream."""
from __future__ import annotations

import asyncio
import threading

import pytest

from fireplace.catalog.smollm2 import ensure_smollm2
from fireplace.engine.async_engine import AsyncEngine
from fireplace.engine.engine_config import EngineConfig
from fireplace.engine.errors import (AdapterLoadError, AdapterUnavailableError, EngineDeadError,
                                     EngineOverloadedError, InvalidRequestError)
from fireplace.engine.llm_engine import LLMEngine
from fireplace.engine.sampling_params import SamplingParams
from tests.engine.helpers import make_hf_checkpoint
from tests.engine.lora_helpers import make_peft_adapter

LONG = SamplingParams(temperature=0, max_tokens=200, ignore_eos=True)
WAIT_S = 10  # far above what any step here takes; reaching it means something hangs


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("async-engine")
    hf = make_hf_checkpoint("llama", path, seed=5)
    make_peft_adapter(hf, path / "adapter", r=4, seed=1)  # beside the weights: not part of the checkpoint
    return path


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(ensure_smollm2()))


@pytest.fixture
def engine(model_dir, tokenizer):
    return LLMEngine(EngineConfig(model=str(model_dir), num_kv_blocks=64, block_size=4, max_num_seqs=8),
                     tokenizer=tokenizer)


def block_engine_thread(aengine: AsyncEngine):
    """Occupy the engine thread with a call until the returned event is set."""
    entered, gate = threading.Event(), threading.Event()

    def hold(_engine):
        entered.set()
        gate.wait(WAIT_S)

    call = asyncio.ensure_future(aengine.call(hold))
    return call, entered, gate


async def wait_thread_event(event: threading.Event) -> None:
    assert await asyncio.get_running_loop().run_in_executor(None, event.wait, WAIT_S)


def test_cancel_while_being_admitted_aborts_only_that_request(engine):
    async def scenario():
        aengine = AsyncEngine(engine)
        keep = aengine.generate([1, 2, 3], SamplingParams(temperature=0, max_tokens=30, ignore_eos=True),
                                request_id="keep")
        first = await asyncio.wait_for(keep.__anext__(), WAIT_S)  # admitted and running
        call, entered, gate = block_engine_thread(aengine)
        await wait_thread_event(entered)

        async def consume(request_id):
            async for _ in aengine.generate([4, 5, 6], LONG, request_id=request_id):
                pass

        # submitted while the engine thread is busy, so both are still waiting for admission
        cancelled = asyncio.ensure_future(consume("cancelled"))
        duplicate = asyncio.ensure_future(consume("keep"))  # its add will fail: id in use
        await asyncio.sleep(0.05)
        cancelled.cancel()
        duplicate.cancel()
        gate.set()
        await call
        for task in (cancelled, duplicate):
            with pytest.raises(asyncio.CancelledError):
                await task
        live = await aengine.call(lambda e: sorted(e._requests))
        assert live in (["keep"], [])  # "cancelled" is gone; the duplicate's abort missed "keep"
        tokens = list(first.outputs[0].token_ids)
        async for out in keep:
            tokens += out.outputs[0].token_ids
        assert len(tokens) == 30
        assert not await aengine.call(lambda e: e.has_unfinished_requests())
        aengine.shutdown()

    asyncio.run(scenario())


def test_engine_thread_death_settles_every_pending_future(engine):
    entered, gate = threading.Event(), threading.Event()
    real_step = engine.step

    def step_then_crash():  # the fault injected: the second step raises inside the engine thread
        if entered.is_set():
            gate.wait(WAIT_S)
            raise RuntimeError("the accelerator fell off the bus")
        entered.set()
        return real_step()

    engine.step = step_then_crash

    async def scenario():
        aengine = AsyncEngine(engine)
        stream = aengine.generate([1, 2, 3], LONG)
        await asyncio.wait_for(stream.__anext__(), WAIT_S)
        await wait_thread_event(entered)
        await asyncio.sleep(0.05)  # the thread is now inside the crashing step
        admission = asyncio.ensure_future(aengine.generate([4, 5], LONG).__anext__())
        call = asyncio.ensure_future(aengine.call(lambda e: "never runs"))
        await asyncio.sleep(0.05)
        gate.set()
        for pending in (stream.__anext__(), admission, call):
            with pytest.raises(EngineDeadError) as info:
                await asyncio.wait_for(pending, WAIT_S)
            assert isinstance(info.value.__cause__, RuntimeError)
        assert isinstance(aengine.error, RuntimeError) and not aengine.is_alive
        with pytest.raises(EngineDeadError):  # and every later use
            await asyncio.wait_for(aengine.call(lambda e: 1), WAIT_S)
        with pytest.raises(EngineDeadError):
            await asyncio.wait_for(aengine.generate([1], LONG).__anext__(), WAIT_S)

    asyncio.run(scenario())


def test_shutdown_ends_every_open_stream(engine):
    async def scenario():
        aengine = AsyncEngine(engine)
        streams = [aengine.generate([1 + i, 2, 3], LONG) for i in range(3)]
        for stream in streams:
            await asyncio.wait_for(stream.__anext__(), WAIT_S)
        call, entered, gate = block_engine_thread(aengine)
        await wait_thread_event(entered)
        queued = aengine.generate([9, 9], LONG)
        waiting = asyncio.ensure_future(queued.__anext__())  # its admission waits for the thread
        await asyncio.sleep(0.05)
        threading.Timer(0.1, gate.set).start()
        aengine.shutdown()  # the held call returns, then the thread stops with 3 streams open
        await call
        async def drain(stream, first=None):
            if first is not None:
                await first  # admitted (and maybe one step ran) or refused
            async for _ in stream:
                pass

        for stream in streams:
            with pytest.raises(EngineDeadError):
                await asyncio.wait_for(drain(stream), WAIT_S)
        with pytest.raises(EngineDeadError):
            await asyncio.wait_for(drain(queued, waiting), WAIT_S)
        with pytest.raises(EngineDeadError):
            await aengine.call(lambda e: 1)

    asyncio.run(scenario())


def test_admission_errors_reach_the_caller_typed(model_dir, tokenizer):
    engine = LLMEngine(EngineConfig(model=str(model_dir), num_kv_blocks=64, block_size=4, max_waiting_requests=1),
                       tokenizer=tokenizer)

    async def scenario():
        aengine = AsyncEngine(engine)
        call, entered, gate = block_engine_thread(aengine)
        await wait_thread_event(entered)
        first = aengine.generate([1, 2], LONG)
        first_out = asyncio.ensure_future(first.__anext__())
        second = asyncio.ensure_future(aengine.generate([3, 4], LONG).__anext__())
        await asyncio.sleep(0.05)
        gate.set()  # both adds run before a step: the second finds the queue full
        with pytest.raises(EngineOverloadedError):
            await asyncio.wait_for(second, WAIT_S)
        assert (await asyncio.wait_for(first_out, WAIT_S)).request_id
        with pytest.raises(InvalidRequestError):
            await aengine.generate([1], SamplingParams(temperature=-1)).__anext__()
        await first.aclose()
        aengine.shutdown()

    asyncio.run(scenario())


def test_adapter_files_are_read_off_the_engine_thread(model_dir, tokenizer):
    engine = LLMEngine(EngineConfig(model=str(model_dir), num_kv_blocks=64, block_size=4, enable_lora=True,
                                    max_loras=2, max_lora_rank=8), tokenizer=tokenizer)
    files = {p.name: p.read_bytes() for p in (model_dir / "adapter").iterdir()}
    downloading = threading.Event()
    release = threading.Event()

    def slow_download():  # the blob store: blocks until the test lets it finish
        downloading.set()
        release.wait(WAIT_S)
        return files

    async def scenario():
        aengine = AsyncEngine(engine)
        stream = aengine.generate([1, 2, 3], LONG)
        await asyncio.wait_for(stream.__anext__(), WAIT_S)
        load = asyncio.ensure_future(aengine.load_adapter("tuned", slow_download))
        await wait_thread_event(downloading)
        for _ in range(5):  # the engine keeps stepping while the download is in flight
            await asyncio.wait_for(stream.__anext__(), 3)
        release.set()
        version = await asyncio.wait_for(load, WAIT_S)
        assert version == await aengine.call(lambda e: e.adapters.version_of("tuned"))
        tokens = []
        async for out in aengine.generate([4, 5, 6], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True),
                                          adapter_id="tuned"):
            tokens += out.outputs[0].token_ids
        assert len(tokens) == 4

        broken = dict(files, **{"adapter_config.json": b"{not json"})
        with pytest.raises(AdapterLoadError, match="adapter_config.json is not valid JSON"):
            await aengine.load_adapter("broken", broken)
        with pytest.raises(AdapterUnavailableError, match="its load failed: adapter_config.json"):
            await aengine.generate([1], LONG, adapter_id="broken").__anext__()
        await stream.aclose()
        aengine.shutdown()

    asyncio.run(scenario())
