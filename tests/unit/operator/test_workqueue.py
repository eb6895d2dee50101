import threading

from tuneguard_operator.workqueue import WorkQueue


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_coalesces_and_never_hands_out_a_key_twice_at_once():
    q = WorkQueue()
    for _ in range(5):
        q.add("a")
    q.add("b")
    assert len(q) == 2
    k = q.get(timeout=0)
    assert k == "a"
    q.add("a")  # while processing: marked dirty, not handed out
    assert q.get(timeout=0) == "b"
    assert q.get(timeout=0) is None
    q.done("a")
    assert q.get(timeout=0) == "a"


def test_delayed_add_and_retry_backoff():
    clock = Clock()
    q = WorkQueue(clock=clock)
    q.add_after("x", 10)
    assert q.get(timeout=0) is None
    clock.t = 10
    assert q.get(timeout=0) == "x"
    q.done("x")
    assert q.retry("y") == 0.5
    assert q.retry("y") == 1.0
    q.forget("y")
    assert q.retry("y") == 0.5


def test_shutdown_wakes_workers():
    q = WorkQueue()
    got = []
    t = threading.Thread(target=lambda: got.append(q.get()))
    t.start()
    q.shutdown()
    t.join(2)
    assert got == [None]
