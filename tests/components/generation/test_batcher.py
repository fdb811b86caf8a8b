import threading

import pytest

from components.config import GenerationConfig
from components.generation.batcher import Batcher, Overloaded, Request
from components.generation.decoder import InStreamDecoder


class Collect:
    """A request's deliveries, and a way to wait for the last one."""

    def __init__(self):
        self.events, self.done = [], threading.Event()

    def __call__(self, event):
        self.events.append(event)
        if isinstance(event, BaseException) or event.kind == "done":
            self.done.set()

    @property
    def generation(self):
        return self.events[-1].generation


class Watched:
    """A decoder whose batches record the rows of every step; the first step waits for `gate`."""

    def __init__(self, decoder: InStreamDecoder):
        self.decoder, self.steps = decoder, []  # per step: the keys of its rows
        self.gate, self.started = threading.Event(), threading.Event()

    def batch(self):
        batch = self.decoder.batch()
        step = batch.step

        def watched_step():
            self.started.set()
            self.gate.wait(30)
            self.steps.append([r.index for r in batch.rows])
            return step()

        batch.step = watched_step
        return batch


def prompts_of(model, n):
    return [model.formatter.prompt([{"role": "user", "content": f"question {i}"}]) for i in range(n)]


def submit(batcher, prompt, cfg) -> Collect:
    collect = Collect()
    batcher.submit(Request(prompt, cfg, collect))
    return collect


@pytest.mark.parametrize("static", [False, True])
def test_a_request_that_arrives_mid_batch_joins_at_the_next_step_unless_static(tiny_model, static):
    decoder = InStreamDecoder(tiny_model.eval())
    watched = Watched(decoder)
    batcher = Batcher(lambda: watched, max_batch=8, wait_s=0.0, static=static).start()
    prompts = prompts_of(tiny_model, 4)
    long, short = GenerationConfig(max_new_tokens=12, retrieval=False), GenerationConfig(max_new_tokens=4, retrieval=False)
    first = submit(batcher, prompts[0], long)
    assert watched.started.wait(10)
    rest = [submit(batcher, p, short) for p in prompts[1:]]  # arrive while the first step runs
    watched.gate.set()
    for c in [first, *rest]:
        assert c.done.wait(30)
    batcher.stop()
    if static:  # the latecomers wait for the whole first answer, then decode together
        assert watched.steps == [[0]] * 12 + [[1, 2, 3]] * 4
    else:  # they join at the next step, and leave when done while the first goes on
        assert watched.steps == [[0]] + [[0, 1, 2, 3]] * 4 + [[0]] * 7
    for c, p, cfg in zip([first, *rest], prompts, [long, short, short, short]):
        assert c.generation.generated == decoder.generate([p], cfg)[0].generated  # as alone
        assert "".join(e.text for e in c.events if e.kind == "text") == c.generation.text  # streamed per row


def test_a_full_queue_refuses_at_once_and_loses_nothing_it_took(tiny_model):
    watched = Watched(InStreamDecoder(tiny_model.eval()))
    batcher = Batcher(lambda: watched, max_batch=1, wait_s=0.0, max_waiting=2).start()
    prompts, cfg = prompts_of(tiny_model, 4), GenerationConfig(max_new_tokens=3, retrieval=False)
    taken = [submit(batcher, prompts[0], cfg)]
    assert watched.started.wait(10)
    taken += [submit(batcher, p, cfg) for p in prompts[1:3]]  # the queue is now full
    with pytest.raises(Overloaded, match="2 requests are waiting") as refused:
        submit(batcher, prompts[3], cfg)
    assert refused.value.retry_after_s >= 1
    watched.gate.set()
    assert all(c.done.wait(30) and c.events[-1].kind == "done" for c in taken)
    assert submit(batcher, prompts[3], cfg).done.wait(30)  # room again
    batcher.stop()


def test_a_prompt_that_does_not_fit_the_tokens_in_flight_waits_for_room(tiny_model):
    watched = Watched(InStreamDecoder(tiny_model.eval()))
    watched.gate.set()
    prompts = prompts_of(tiny_model, 2)
    batcher = Batcher(lambda: watched, max_batch=8, wait_s=0.2, max_tokens=len(prompts[0]) + 4).start()
    cfg = GenerationConfig(max_new_tokens=3, retrieval=False)
    both = [submit(batcher, p, cfg) for p in prompts]
    assert all(c.done.wait(30) for c in both)
    batcher.stop()
    assert max(len(rows) for rows in watched.steps) == 1  # one at a time: two prompts exceed the budget
    assert [c.events[-1].kind for c in both] == ["done", "done"]


def test_a_new_model_takes_new_rows_once_the_running_ones_finish_on_the_old(tiny_model):
    old, new = Watched(InStreamDecoder(tiny_model.eval())), Watched(InStreamDecoder(tiny_model))
    current = [old]
    batcher = Batcher(lambda: current[0], wait_s=0.0).start()
    prompts = prompts_of(tiny_model, 2)
    running = submit(batcher, prompts[0], GenerationConfig(max_new_tokens=6, retrieval=False))
    assert old.started.wait(10)
    current[0] = new  # a new @champion
    later = submit(batcher, prompts[1], GenerationConfig(max_new_tokens=2, retrieval=False))
    old.gate.set(), new.gate.set()
    assert running.done.wait(30) and later.done.wait(30)
    batcher.stop()
    assert old.steps == [[0]] * 6 and new.steps == [[1]] * 2


def test_a_bad_request_is_refused_alone_and_its_batch_goes_on(tiny_model):
    watched = Watched(InStreamDecoder(tiny_model.eval()))
    watched.gate.set()
    batcher = Batcher(lambda: watched, wait_s=0.2).start()
    prompt, cfg = prompts_of(tiny_model, 1)[0], GenerationConfig(max_new_tokens=3, retrieval=False)
    good, bad = submit(batcher, prompt, cfg), submit(batcher, [], cfg)
    assert good.done.wait(30) and bad.done.wait(30)
    batcher.stop()
    assert good.events[-1].kind == "done" and isinstance(bad.events[-1], ValueError)


def test_a_failing_batch_is_reported_to_its_requests_and_the_loop_goes_on(tiny_model):
    decoder = InStreamDecoder(tiny_model.eval())
    calls = []

    def provider():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("the model fell over")
        return decoder

    batcher = Batcher(provider, wait_s=0.0).start()
    prompt = tiny_model.formatter.prompt([{"role": "user", "content": "hi"}])
    failed = submit(batcher, prompt, GenerationConfig(max_new_tokens=3))
    assert failed.done.wait(10) and isinstance(failed.events[-1], RuntimeError)
    ok = submit(batcher, prompt, GenerationConfig(max_new_tokens=3))
    assert ok.done.wait(30) and ok.events[-1].kind == "done" and batcher.healthy
    batcher.stop()


def test_a_failing_step_is_reported_to_the_running_requests_and_the_loop_goes_on(tiny_model):
    decoder = InStreamDecoder(tiny_model.eval())
    broken = [True]

    class Breaks:
        def batch(self):
            batch = decoder.batch()
            step = batch.step
            batch.step = lambda: (_ for _ in ()).throw(RuntimeError("a step fell over")) if broken[0] else step()
            return batch

    batcher = Batcher(lambda: Breaks(), wait_s=0.0).start()
    prompt = tiny_model.formatter.prompt([{"role": "user", "content": "hi"}])
    failed = submit(batcher, prompt, GenerationConfig(max_new_tokens=3))
    assert failed.done.wait(10) and isinstance(failed.events[-1], RuntimeError)
    broken[0] = False
    ok = submit(batcher, prompt, GenerationConfig(max_new_tokens=3))
    assert ok.done.wait(30) and ok.events[-1].kind == "done" and batcher.healthy
    batcher.stop()


def test_a_fatal_error_leaves_the_batcher_unhealthy_so_the_server_is_restarted(tiny_model):
    def provider():
        raise SystemExit("out of memory, say")

    batcher = Batcher(provider).start()
    prompt = tiny_model.formatter.prompt([{"role": "user", "content": "hi"}])
    victim = submit(batcher, prompt, GenerationConfig(max_new_tokens=3))
    assert victim.done.wait(10) and isinstance(victim.events[-1], SystemExit)
    batcher._thread.join(10)
    assert not batcher.healthy
    with pytest.raises(RuntimeError, match="decode loop is not running"):
        submit(batcher, prompt, GenerationConfig())
