"""The serving scheduler in-process: dynamic batches decode every row as it would decode alone, stream exactly the
final text, honour per-row limits and seeds, cancel, bound the queue and survive a failing batch."""
import contextlib
import threading

import pytest

from mftcoder.infer.engine import GenerationSettings, generate_texts
from mftcoder.infer.prompts import render_messages
from mftcoder.model.inference import load_for_inference
from mftcoder.serve.scheduler import Delta, Failed, Finished, Job, QueueFull, Sampling, Scheduler, held_back
from mftcoder.serve.service import ServedModel

PROMPTS = ["Write a function that adds two numbers.", "def add_1(a, b):", "Reverse a string in Python, please.",
           "What is 7 times 6?", "hello", "Sort a list of integers in place and return it."]


@pytest.fixture(scope="module")
def served(tiny_chat_model_dir):
    model, tok = load_for_inference(tiny_chat_model_dir, threads=1)
    return ServedModel("tiny", model, tok)


class Recorder:
    """A job's sink: every event, and a way to wait for the job's end."""

    def __init__(self, n: int = 1, label: str = "", order: list | None = None):
        self.events, self.n, self.done = [], n, threading.Event()
        self.label, self.order = label, order if order is not None else []

    def __call__(self, event):
        self.events.append(event)
        if isinstance(event, Finished):
            self.order.append(self.label)
        if isinstance(event, Failed) or sum(isinstance(e, Finished) for e in self.events) == self.n:
            self.done.set()

    def finished(self, choice: int = 0) -> Finished:
        return next(e for e in self.events if isinstance(e, Finished) and e.choice == choice)

    def streamed(self, choice: int = 0) -> str:
        return "".join(e.text for e in self.events if isinstance(e, Delta) and e.choice == choice)


def chat_ids(served, text: str) -> list[int]:
    rendered = render_messages(served.tokenizer, [{"role": "user", "content": text}])
    return served.tokenizer(rendered, add_special_tokens=False)["input_ids"]


def reference(served, text: str, **settings) -> tuple[str, str]:
    out = generate_texts(served.model, served.tokenizer, [chat_ids(served, text)],
                         GenerationSettings(batch_size=1, **settings), progress=False)
    return out.texts[0][0], out.finish[0][0]


def run_jobs(served, specs, **scheduler_args):
    """Submit every (prompt, Sampling) before the worker starts, so they share batches; wait for all."""
    scheduler = Scheduler(**({"max_batch_rows": 16, "wait_s": 0.05} | scheduler_args))
    recorders = [Recorder(s.n) for _, s in specs]
    for (text, sampling), rec in zip(specs, recorders):
        scheduler.submit(Job(served, chat_ids(served, text), sampling, rec))
    scheduler.start()
    for rec in recorders:
        assert rec.done.wait(120)
    scheduler.stop(10)
    return scheduler, recorders


def test_held_back_keeps_incomplete_characters_and_stop_prefixes():
    assert held_back("abc", ()) == 0
    assert held_back("ab\ufffd\ufffd", ()) == 2
    assert held_back("answer: </", ("</end>",)) == 2
    assert held_back("answer: <", ("</end>", "<x")) == 1
    assert held_back("answer </end", ("</end>",)) == 5


def test_a_batch_decodes_every_request_as_it_would_alone(served):
    limits = [12, 5, 9, 12, 3, 7]
    specs = [(p, Sampling(max_tokens=m)) for p, m in zip(PROMPTS, limits)]
    scheduler, recorders = run_jobs(served, specs)
    assert scheduler.largest_batch == len(PROMPTS) and scheduler.joins == 1  # they started as one batch
    for (text, sampling), rec in zip(specs, recorders):
        expected, reason = reference(served, text, max_new_tokens=sampling.max_tokens)
        done = rec.finished()
        assert done.text == expected and rec.streamed() == expected  # the stream is exactly the answer
        assert (done.reason, done.tokens) == ("length", sampling.max_tokens) and reason == "length"
    assert scheduler.pending == 0


def test_a_request_arriving_mid_decode_joins_at_the_next_step(served):
    """A long answer is decoding; a short request submitted later joins it (no wait for the long one to end),
    finishes first, and both answers equal their single-request answers."""
    scheduler = Scheduler(max_batch_rows=4, wait_s=0.0).start()
    order = []
    long, short = Recorder(label="long", order=order), Recorder(label="short", order=order)
    joined = threading.Event()
    long_job = Job(served, chat_ids(served, "hi"), Sampling(max_tokens=400), long)  # greedy runs to 400 tokens
    original = long_job.sink

    def submit_short_after_ten_pieces(event):
        original(event)
        if sum(isinstance(e, Delta) for e in long.events) == 10 and not joined.is_set():
            joined.set()
            scheduler.submit(Job(served, chat_ids(served, PROMPTS[5]), Sampling(max_tokens=6), short))

    long_job.sink = submit_short_after_ten_pieces
    scheduler.submit(long_job)
    assert long.done.wait(120) and short.done.wait(120)
    scheduler.stop(10)
    assert scheduler.joins == 2 and scheduler.largest_batch == 2  # the short one joined the long one in flight
    assert order == ["short", "long"]  # it did not wait for the long answer to end
    assert short.finished().tokens == 6 and long.finished().tokens == 400
    assert short.finished().text == reference(served, PROMPTS[5], max_new_tokens=6)[0]
    assert long.finished().text == reference(served, "hi", max_new_tokens=400)[0] == long.streamed()


def test_rows_that_leave_free_their_place_for_queued_requests(served):
    """With room for 2 rows, 5 requests of different lengths all decode (each as it would alone), the batch
    never holds more than 2, and queued requests start as earlier ones end."""
    limits = [3, 20, 5, 8, 2]
    specs = [(p, Sampling(max_tokens=m)) for p, m in zip(PROMPTS, limits)]
    scheduler, recorders = run_jobs(served, specs, max_batch_rows=2)
    assert scheduler.largest_batch == 2 and scheduler.joins >= 3
    for (text, sampling), rec in zip(specs, recorders):
        assert rec.finished().text == reference(served, text, max_new_tokens=sampling.max_tokens)[0]


def test_stop_strings_and_eos_per_row_in_one_batch(served):
    full, _ = reference(served, PROMPTS[0], max_new_tokens=16)
    stop = full[5:8]
    assert stop.strip() and full.find(stop) >= 5
    eos = served.tokenizer.eos_token  # a stop string that is a special token also ends a row
    specs = [(PROMPTS[0], Sampling(max_tokens=16, stop=(stop,))), (PROMPTS[1], Sampling(max_tokens=16)),
             (PROMPTS[2], Sampling(max_tokens=16, stop=(eos, "zzzz")))]
    _, recorders = run_jobs(served, specs)
    cut = recorders[0].finished()
    assert cut.text == full[:full.find(stop)] and cut.reason == "stop" and recorders[0].streamed() == cut.text
    assert recorders[1].finished().text == reference(served, PROMPTS[1], max_new_tokens=16)[0]
    assert recorders[2].finished().text == reference(served, PROMPTS[2], max_new_tokens=16, stop=(eos, "zzzz"))[0]


def test_seeded_sampling_does_not_depend_on_the_batch(served):
    sampled = Sampling(max_tokens=10, temperature=0.9, top_p=0.95, n=3, seed=1234)
    _, alone = run_jobs(served, [(PROMPTS[0], sampled)])
    _, crowded = run_jobs(served, [(PROMPTS[3], Sampling(max_tokens=10, temperature=1.0, seed=7)),
                                   (PROMPTS[0], sampled), (PROMPTS[4], Sampling(max_tokens=4))])
    texts = [alone[0].finished(c).text for c in range(3)]
    assert texts == [crowded[1].finished(c).text for c in range(3)]
    assert len(set(texts)) > 1  # the choices sample from different seeds
    _, other_seed = run_jobs(served, [(PROMPTS[0], Sampling(max_tokens=10, temperature=0.9, top_p=0.95, n=3,
                                                            seed=99))])
    assert [other_seed[0].finished(c).text for c in range(3)] != texts


def test_cancelled_jobs_leave_the_batch_and_free_their_slot(served):
    scheduler = Scheduler(max_batch_rows=4, wait_s=0.05, max_pending=2)
    long, queued = Recorder(), Recorder()
    job = Job(served, chat_ids(served, PROMPTS[0]), Sampling(max_tokens=400), long)
    original_sink = job.sink

    def cancel_after_three(event):  # the client goes away after three pieces of text
        original_sink(event)
        if sum(isinstance(e, Delta) for e in long.events) == 3:
            job.cancel()

    job.sink = cancel_after_three
    waiting = Job(served, chat_ids(served, PROMPTS[1]), Sampling(max_tokens=400), queued)
    waiting.cancel()  # gone before it was decoded
    scheduler.submit(job)
    scheduler.submit(waiting)
    with pytest.raises(QueueFull, match="--max_queue 2"):
        scheduler.submit(Job(served, [1, 2], Sampling(max_tokens=1), Recorder()))
    scheduler.start()
    assert long.done.wait(60) and queued.done.wait(60)
    assert long.finished().reason == "cancelled" and long.finished().tokens < 40
    assert queued.finished() == Finished(0, "cancelled", "", 0)
    assert scheduler.pending == 0  # both slots are free again
    fresh = Recorder()
    scheduler.submit(Job(served, chat_ids(served, PROMPTS[2]), Sampling(max_tokens=3), fresh))
    assert fresh.done.wait(60) and fresh.finished().tokens == 3
    scheduler.stop(10)


class Broken(ServedModel):
    @contextlib.contextmanager
    def activate(self):
        raise RuntimeError("adapter switch failed")
        yield


def test_a_failing_batch_fails_its_requests_and_the_worker_goes_on(served):
    scheduler = Scheduler(max_batch_rows=4, wait_s=0.0).start()
    bad, good = Recorder(), Recorder()
    scheduler.submit(Job(Broken("broken", served.model, served.tokenizer), chat_ids(served, PROMPTS[0]),
                         Sampling(max_tokens=3), bad))
    assert bad.done.wait(60) and bad.events == [Failed("RuntimeError: adapter switch failed")]
    scheduler.submit(Job(served, chat_ids(served, PROMPTS[0]), Sampling(max_tokens=3), good))
    assert good.done.wait(60) and good.finished().tokens == 3
    scheduler.stop(10)
    assert scheduler.pending == 0


def test_stop_finishes_admitted_jobs_then_refuses(served):
    scheduler = Scheduler(max_batch_rows=2, wait_s=0.0)
    recs = [Recorder() for _ in range(3)]
    for text, rec in zip(PROMPTS, recs):
        scheduler.submit(Job(served, chat_ids(served, text), Sampling(max_tokens=4), rec))
    scheduler.start()
    scheduler.stop(60)
    assert all(r.done.is_set() and r.finished().tokens == 4 for r in recs)
    with pytest.raises(QueueFull, match="shutting down"):
        scheduler.submit(Job(served, [1], Sampling(max_tokens=1), Recorder()))
