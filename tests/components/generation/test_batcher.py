import threading

import pytest

from components.config import GenerationConfig
from components.generation.batcher import Batcher
from components.generation.decoder import InStreamDecoder


class Collect:
    """A request's deliveries, and a way to wait for the last one."""

    def __init__(self):
        self.events, self.done = [], threading.Event()

    def __call__(self, event):
        self.events.append(event)
        if isinstance(event, BaseException) or event.kind == "done":
            self.done.set()


def test_requests_that_wait_are_decoded_together_and_get_their_own_events(tiny_model):
    decoder = InStreamDecoder(tiny_model.eval())
    gate, started = threading.Event(), threading.Event()
    batch_sizes = []

    class Gated:
        """Holds the first batch until the others are queued behind it."""

        def stream(self, prompts, configs):
            batch_sizes.append(len(prompts))
            started.set()
            gate.wait(10)
            yield from decoder.stream(prompts, configs)

    batcher = Batcher(lambda: Gated(), max_batch=8, wait_s=0.05).start()
    prompts = [tiny_model.formatter.prompt([{"role": "user", "content": f"question {i}"}]) for i in range(4)]
    cfg = GenerationConfig(max_new_tokens=6, retrieval=False)
    first, rest = Collect(), [Collect() for _ in range(3)]
    batcher.submit(prompts[0], cfg, first)
    started.wait(10)
    for p, c in zip(prompts[1:], rest):  # arrive while the decoder is busy
        batcher.submit(p, cfg, c)
    gate.set()
    for c in [first, *rest]:
        assert c.done.wait(30)
    assert batch_sizes == [1, 3]
    alone = [decoder.generate([p], cfg)[0] for p in prompts]
    for c, expected in zip([first, *rest], alone):
        done = c.events[-1].generation
        assert done.generated == expected.generated
        assert "".join(e.text for e in c.events if e.kind == "text") == done.text
    batcher.stop()


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
    failed, ok = Collect(), Collect()
    batcher.submit(prompt, GenerationConfig(max_new_tokens=3), failed)
    assert failed.done.wait(10) and isinstance(failed.events[-1], RuntimeError)
    batcher.submit(prompt, GenerationConfig(max_new_tokens=3), ok)
    assert ok.done.wait(30) and ok.events[-1].kind == "done" and batcher.healthy
    batcher.stop()


def test_a_fatal_error_leaves_the_batcher_unhealthy_so_the_server_is_restarted(tiny_model):
    def provider():
        raise SystemExit("out of memory, say")

    batcher = Batcher(provider).start()
    prompt = tiny_model.formatter.prompt([{"role": "user", "content": "hi"}])
    victim = Collect()
    batcher.submit(prompt, GenerationConfig(max_new_tokens=3), victim)
    assert victim.done.wait(10) and isinstance(victim.events[-1], SystemExit)
    batcher._thread.join(10)
    assert not batcher.healthy
    with pytest.raises(RuntimeError, match="decode loop is not running"):
        batcher.submit(prompt, GenerationConfig(), Collect())
