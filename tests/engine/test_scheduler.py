import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fireplace.engine.errors import ContextLengthExceededError, InvalidRequestError
from fireplace.engine.sampling_params import SamplingParams
from fireplace.engine.scheduler import Scheduler, SchedulerOutput
from fireplace.engine.scheduler_config import SchedulerConfig
from fireplace.engine.sequence import Sequence, SequenceStatus

EOS = 0


def _config(**changes) -> SchedulerConfig:
    values = dict(num_blocks=64, block_size=4, max_model_len=256, max_num_seqs=8, max_num_batched_tokens=32)
    values.update(changes)
    return SchedulerConfig(**values)


def _request(request_id: str, prompt_len: int, *, adapter_id=None, arrival=None, **params) -> Sequence:
    params.setdefault("max_tokens", 4)
    prompt = [1 + (i * 7 + len(request_id)) % 50 for i in range(prompt_len)]
    return Sequence(request_id, prompt, SamplingParams(**params), adapter_id=adapter_id, arrival_time=arrival)


def _fake_token(entry) -> int:
    """A model that never says EOS: a deterministic token from the sequence's state."""
    return 100 + (entry.seq.sample_index * 31 + entry.seq.num_tokens) % 50


def _step(sched: Scheduler, token=_fake_token) -> tuple[SchedulerOutput, list[Sequence]]:
    out = sched.schedule()
    return out, sched.update(out, [token(e) for e in out.logits_seqs])


def _run(sched: Scheduler, max_steps: int = 1_000, token=_fake_token) -> list[Sequence]:
    finished = []
    for _ in range(max_steps):
        if not sched.has_unfinished:
            return finished
        out, done = _step(sched, token)
        finished += done + out.rejected
    raise AssertionError("scheduler did not drain")


def test_config_is_validated():
    with pytest.raises(ValueError, match="max_model_len"):
        SchedulerConfig(num_blocks=4, block_size=4, max_model_len=17)
    with pytest.raises(ValueError, match="max_num_batched_tokens"):
        SchedulerConfig(num_blocks=4, max_model_len=16, max_num_seqs=8, max_num_batched_tokens=4)
    with pytest.raises(ValueError, match="max_loras"):
        SchedulerConfig(num_blocks=4, max_model_len=16, max_loras=0)
    with pytest.raises(TypeError):
        SchedulerConfig(num_blocks=4, max_model_len=16, max_batch=3)  # unknown keys refused


def test_one_request_prefills_then_decodes_to_max_tokens():
    sched = Scheduler(_config(), eos_token_ids=[EOS])
    seq = _request("a", 10, max_tokens=3)
    sched.add(seq)
    out, done = _step(sched)
    [entry] = out.scheduled
    assert (entry.start_pos, entry.num_new_tokens, entry.needs_logits) == (0, 10, True)
    assert entry.token_ids == seq.prompt_token_ids and entry.positions == range(10)
    assert entry.context_len == 10 and len(entry.block_table) == 3
    assert entry.slot_mapping(4)[4] == entry.block_table[1] * 4
    out, _ = _step(sched)
    assert out.is_decode_only and out.scheduled[0].start_pos == 10
    out, done = _step(sched)
    assert done == [seq] and seq.finish_reason == "length" and seq.num_output_tokens == 3
    assert sched.block_manager.num_used_blocks == 0 and not sched.has_unfinished


def test_long_prompt_is_chunked_and_decodes_go_first():
    sched = Scheduler(_config(max_num_batched_tokens=16), eos_token_ids=[EOS])
    early = _request("early", 3, max_tokens=20)
    sched.add(early)
    _step(sched)
    long = _request("long", 40)
    sched.add(long)
    chunks = []
    while long.num_output_tokens == 0:
        out, _ = _step(sched)
        assert out.num_batched_tokens <= 16
        assert out.scheduled[0].seq is early and out.scheduled[0].is_decode  # decode first
        entry = next(e for e in out.scheduled if e.seq is long)
        chunks.append((entry.start_pos, entry.num_new_tokens, entry.needs_logits))
    assert chunks == [(0, 15, False), (15, 15, False), (30, 10, True)]


def test_max_num_seqs_bounds_the_batch():
    sched = Scheduler(_config(max_num_seqs=2), eos_token_ids=[EOS])
    for i in range(4):
        sched.add(_request(f"r{i}", 4))
    out, _ = _step(sched)
    assert len(out.scheduled) == 2 and sched.num_waiting == 2
    assert len(_run(sched)) == 4


def test_preemption_recomputes_latest_arrival_and_keeps_outputs():
    # 6 blocks of 4 tokens; two sequences that each grow to 4 blocks cannot both fit
    sched = Scheduler(_config(num_blocks=6, max_model_len=24, enable_prefix_caching=False), eos_token_ids=[EOS])
    first = _request("first", 8, max_tokens=8, arrival=1.0)
    second = _request("second", 8, max_tokens=8, arrival=2.0)
    sched.add(first)
    sched.add(second)
    preempted = []
    recompute_chunk = None
    for _ in range(100):
        if not sched.has_unfinished:
            break
        out, _ = _step(sched)
        preempted += out.preempted
        for entry in out.scheduled:
            if entry.seq is second and second.num_preemptions and entry.start_pos == 0:
                recompute_chunk = (entry.num_new_tokens, len(entry.token_ids))
    assert preempted and all(s is second for s in preempted)
    assert first.finish_reason == second.finish_reason == "length"
    assert first.num_output_tokens == second.num_output_tokens == 8
    assert recompute_chunk is not None and recompute_chunk[0] > second.num_prompt_tokens  # outputs recomputed
    assert sched.block_manager.num_used_blocks == 0


def test_preempted_request_returns_to_front_of_queue():
    sched = Scheduler(_config(num_blocks=4, max_model_len=16, max_num_seqs=4, enable_prefix_caching=False))
    a = _request("a", 4, max_tokens=8, arrival=1.0)
    b = _request("b", 4, max_tokens=8, arrival=2.0)
    sched.add(a)
    sched.add(b)
    _step(sched)
    c = _request("c", 4, arrival=3.0)
    sched.add(c)
    for _ in range(20):
        out, _ = _step(sched)
        if out.preempted:
            break
    assert out.preempted == [b] and b.status is SequenceStatus.PREEMPTED
    assert list(sched.waiting)[:2] == [b, c]


def test_impossible_request_is_rejected_without_blocking_others():
    sched = Scheduler(_config(num_blocks=8, max_model_len=32), eos_token_ids=[EOS])
    huge = _request("huge", 40)
    small = _request("small", 5)
    sched.add(huge)
    sched.add(small)
    out, _ = _step(sched)
    assert out.rejected == [huge] and huge.finish_reason == "error"
    assert isinstance(huge.error, ContextLengthExceededError)
    assert [e.seq for e in out.scheduled] == [small]
    assert sched.sequences("huge") == []


def test_add_refuses_bad_requests():
    sched = Scheduler(_config(max_num_seqs=4))
    sched.add(_request("a", 3))
    with pytest.raises(InvalidRequestError):
        sched.add(_request("a", 3))  # duplicate live id
    with pytest.raises(InvalidRequestError):
        sched.add(_request("b", 0))
    with pytest.raises(InvalidRequestError) as info:
        sched.add(_request("c", 3, n=5))
    assert info.value.param == "n"
    with pytest.raises(InvalidRequestError) as info:
        sched.add(_request("d", 3, temperature=-1))
    assert info.value.param == "temperature"


def test_abort_frees_blocks_at_once_and_survives_an_in_flight_step():
    sched = Scheduler(_config())
    a, b = _request("a", 9, max_tokens=50), _request("b", 9, max_tokens=2)
    sched.add(a)
    sched.add(b)
    out = sched.schedule()
    assert sched.abort("a") == [a]  # while "the model runs"
    assert a.finish_reason == "abort" and a.block_table == []
    finished = sched.update(out, [_fake_token(e) for e in out.logits_seqs])
    assert finished == [] and a.num_output_tokens == 0 and b.num_output_tokens == 1
    assert sched.abort("a") == [] and sched.abort("unknown") == []
    waiting = _request("w", 3)
    sched.add(waiting)
    sched.abort("w")
    assert waiting.finish_reason == "abort" and sched.num_waiting == 0
    _run(sched)
    assert sched.block_manager.num_used_blocks == 0


def test_eos_stop_tokens_and_min_tokens():
    sched = Scheduler(_config(), eos_token_ids=[EOS])
    eos = _request("eos", 3, max_tokens=10)
    ignore = _request("ignore", 3, max_tokens=3, ignore_eos=True)
    stop_id = _request("stop", 3, max_tokens=10, stop_token_ids=[EOS + 5])
    late = _request("late", 3, max_tokens=10, min_tokens=2)
    for seq in (eos, ignore, stop_id, late):
        sched.add(seq)
    tokens = {"eos": EOS, "ignore": EOS, "stop": EOS + 5, "late": EOS}
    _run(sched, token=lambda e: tokens[e.seq.request_id])
    assert (eos.finish_reason, eos.num_output_tokens, eos.stop_reason) == ("stop", 1, None)
    assert (ignore.finish_reason, ignore.num_output_tokens) == ("length", 3)
    assert (stop_id.finish_reason, stop_id.stop_reason) == ("stop", EOS + 5)
    assert (late.finish_reason, late.num_output_tokens) == ("stop", 3)


def test_context_length_ends_generation():
    sched = Scheduler(_config(max_model_len=12))
    seq = _request("a", 10, max_tokens=None)
    sched.add(seq)
    _run(sched)
    assert seq.finish_reason == "length" and seq.num_tokens == 12


def test_n_children_fork_after_prefill_and_share_prompt_blocks():
    sched = Scheduler(_config(), eos_token_ids=[EOS])
    parent = _request("multi", 10, n=3, max_tokens=4)
    sched.add(parent)
    _step(sched)
    family = sched.sequences("multi")
    assert [s.sample_index for s in family] == [0, 1, 2]
    children = family[1:]
    for child in children:
        assert child.block_table == parent.block_table[:2] and child.num_computed_tokens == 8
    assert sched.block_manager.ref_counts[parent.block_table[0]] == 3
    out, _ = _step(sched)
    tails = {e.seq.sample_index: (e.start_pos, e.num_new_tokens, e.needs_logits) for e in out.scheduled}
    assert tails == {0: (10, 1, True), 1: (8, 2, True), 2: (8, 2, True)}
    _run(sched)
    assert all(s.num_output_tokens == 4 and s.finish_reason == "length" for s in family)
    assert sched.block_manager.num_used_blocks == 0


def test_abort_request_aborts_all_children():
    sched = Scheduler(_config())
    sched.add(_request("multi", 5, n=4, max_tokens=10))
    _step(sched)
    aborted = sched.abort("multi")
    assert len(aborted) == 4 and all(s.finish_reason == "abort" for s in aborted)
    assert sched.block_manager.num_used_blocks == 0 and not sched.has_unfinished


def test_n_reserves_batch_slots():
    sched = Scheduler(_config(max_num_seqs=4))
    sched.add(_request("multi", 5, n=3, max_tokens=3))
    sched.add(_request("single", 5, max_tokens=3))
    sched.add(_request("other", 5, max_tokens=3))
    out, _ = _step(sched)
    assert {e.seq.request_id for e in out.scheduled} == {"multi", "single"}
    for _ in range(50):
        out, _ = _step(sched)
        assert len(out.scheduled) <= 4
        if not sched.has_unfinished:
            break


def test_prefix_cache_hits_skip_computed_tokens():
    sched = Scheduler(_config(), eos_token_ids=[EOS])
    first = _request("first", 13, max_tokens=1)
    sched.add(first)
    _run(sched)
    again = Sequence("again", first.prompt_token_ids, SamplingParams(max_tokens=1))
    sched.add(again)
    out, _ = _step(sched)
    [entry] = out.scheduled
    assert (entry.start_pos, entry.num_new_tokens) == (12, 1)
    assert again.num_cached_tokens == 12
    other_adapter = Sequence("lora", first.prompt_token_ids, SamplingParams(max_tokens=1), adapter_id="x")
    sched.add(other_adapter)
    out, _ = _step(sched)
    assert out.scheduled[0].start_pos == 0
    assert 0 < sched.block_manager.stats.hit_rate < 1


def test_max_loras_limits_distinct_adapters_and_bypass_is_bounded():
    sched = Scheduler(_config(max_loras=2, max_adapter_bypass=2, max_num_seqs=16, max_num_batched_tokens=64))
    sched.add(_request("a1", 3, adapter_id="a", max_tokens=30))
    sched.add(_request("b1", 3, adapter_id="b", max_tokens=30))
    sched.add(_request("c1", 3, adapter_id="c", max_tokens=2))  # waits for a slot
    for i in range(4):
        sched.add(_request(f"a{i + 2}", 3, adapter_id="a", max_tokens=2))
    sched.add(_request("base", 3, max_tokens=2))  # the base model needs no slot
    out, _ = _step(sched)
    admitted = [e.seq.request_id for e in out.scheduled]
    assert len(out.adapter_ids) <= 2 and "c1" not in admitted
    assert admitted == ["a1", "b1", "a2", "a3"]  # two bypasses, then c1 blocks the queue
    seen_c1_at = None
    for step in range(200):
        out, _ = _step(sched)
        assert len(sched.active_adapter_ids) <= 2
        if any(e.seq.request_id == "c1" for e in out.scheduled) and seen_c1_at is None:
            seen_c1_at = step
            assert sched.sequences("base")  # still waiting behind c1: FCFS after bypass limit
        if not sched.has_unfinished:
            break
    assert seen_c1_at is not None and not sched.has_unfinished


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    events=st.lists(st.tuples(
        st.integers(1, 30),  # prompt length
        st.integers(1, 12),  # max_tokens
        st.integers(1, 3),  # n
        st.sampled_from([None, "a", "b", "c"]),  # adapter
        st.booleans(),  # abort it a few steps later
        st.integers(0, 3),  # steps before the next arrival
    ), min_size=1, max_size=14),
    num_blocks=st.integers(4, 12),
    budget=st.sampled_from([4, 8, 64]),
    max_loras=st.sampled_from([None, 1, 2]),
    caching=st.booleans(),
)
def test_random_workload_always_drains(events, num_blocks, budget, max_loras, caching):
    config = SchedulerConfig(num_blocks=num_blocks, block_size=4, max_model_len=min(num_blocks * 4, 24),
                             max_num_seqs=4, max_num_batched_tokens=budget, max_loras=max_loras,
                             max_adapter_bypass=3, enable_prefix_caching=caching)
    sched = Scheduler(config, eos_token_ids=[EOS])
    bm = sched.block_manager
    pending = list(enumerate(events))
    added: list[Sequence] = []
    first_admission: list[str] = []
    abort_at: dict[str, int] = {}
    wait = 0
    for step in range(2_000):
        while pending and wait == 0:
            i, (prompt_len, max_tokens, n, adapter, abort, gap) = pending.pop(0)
            seq = _request(f"r{i}", prompt_len, adapter_id=adapter, arrival=float(i),
                           max_tokens=max_tokens, n=n)
            sched.add(seq)
            added.append(seq)
            if abort:
                abort_at[seq.request_id] = step + gap + 1
            wait = gap
        wait = max(0, wait - 1)
        for request_id, at in list(abort_at.items()):
            if at == step:
                sched.abort(request_id)
        out, _ = _step(sched, token=lambda e: EOS if (e.seq.seq_id + e.seq.num_tokens) % 11 == 0 else 7)
        for entry in out.scheduled:
            if entry.seq.sample_index == 0 and entry.seq.request_id not in first_admission:
                first_admission.append(entry.seq.request_id)
        # invariants every step
        assert len(out.scheduled) <= config.max_num_seqs
        assert out.num_batched_tokens <= budget
        if max_loras is not None:
            assert len(sched.active_adapter_ids) <= max_loras
        assert bm.num_free_blocks + bm.num_used_blocks == bm.num_blocks
        assert all(r >= 0 for r in bm.ref_counts)
        live_blocks = [b for s in sched.running for b in s.block_table]
        assert set(live_blocks) == {b for b in range(bm.num_blocks) if bm.ref_counts[b] > 0}
        assert all(not s.block_table for s in sched.waiting)
        if not pending and not sched.has_unfinished:
            break
    else:
        raise AssertionError("no progress: the scheduler deadlocked or starved a request")
    assert bm.num_used_blocks == 0
    for seq in added:
        assert seq.is_finished
        if seq.finish_reason == "error":
            assert seq.num_prompt_tokens >= config.max_model_len
    if max_loras is None:
        order = [s.request_id for s in added]
        admitted = [r for r in order if r in first_admission]
        assert first_admission == admitted  # FCFS: first admissions follow arrival order


def test_stats_snapshot_and_throughput_window():
    from fireplace.engine.stats import EngineStats, ThroughputMeter

    now = [0.0]
    meter = ThroughputMeter(window_s=10.0, clock=lambda: now[0])
    sched = Scheduler(_config())
    sched.add(_request("a", 10, max_tokens=5))
    sched.add(_request("b", 10, max_tokens=5))
    for _ in range(3):
        now[0] += 1.0
        out, _ = _step(sched)
        meter.record(out.num_prompt_tokens, out.num_generated_tokens)
    stats = EngineStats.collect(sched, meter, adapter_slots_total=4)
    assert (stats.num_running, stats.num_waiting, stats.adapter_slots_total) == (2, 0, 4)
    assert stats.kv_blocks_used == 6 and stats.kv_blocks_used + stats.kv_blocks_free == 64
    assert stats.prompt_tokens_per_s == pytest.approx(20 / 3)
    assert stats.generation_tokens_per_s == pytest.approx(6 / 3)
    now[0] += 60.0
    assert meter.rates() == (0.0, 0.0)


def test_older_prefill_preempts_a_newer_decode_already_in_the_batch():
    # "newer" got in first (as when an older request waited for an adapter slot) and decodes;
    # the older one is admitted with its whole prompt reserved, but newer's decodes grow into
    # that reserve, so the older prefill runs out of blocks and takes them from the newer one.
    sched = Scheduler(_config(num_blocks=7, max_model_len=24, max_num_seqs=2, max_num_batched_tokens=3,
                              enable_prefix_caching=False))
    newer = _request("newer", 3, max_tokens=12, arrival=2.0)
    older = _request("older", 20, max_tokens=2, arrival=1.0)
    sched.add(newer)
    _step(sched)
    sched.add(older)
    for _ in range(20):
        out, _ = _step(sched)
        assert out.num_batched_tokens <= 3
        if out.preempted:
            break
    assert out.preempted == [newer]
    assert [e.seq for e in out.scheduled] == [older]
    assert out.scheduled[0].num_new_tokens == 3  # the victim's decode token went back to the budget
    _run(sched)
    assert older.finish_reason == newer.finish_reason == "length"
