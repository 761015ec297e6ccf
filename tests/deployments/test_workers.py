"""Worker-side pieces that need no Ray cluster: rank 0's step count (read by the replica from another actor thread),
the stop agreement, and the interface lookup that pins gloo to the node address. (The store writes of progress moved
to the replica's runner: tests/deployments/test_engine.py.)"""

from __future__ import annotations

import threading
import time

from deployments.workers import StepProgress, _agree, _interface_for


def test_step_progress_is_read_from_another_thread_while_steps_run():
    progress = StepProgress()
    progress.start(10)
    seen = []
    reader = threading.Thread(target=lambda: [seen.append(progress.read()) or time.sleep(0.001) for _ in range(50)])
    reader.start()
    for step in range(10):
        progress.step(step + 1, 10)
        time.sleep(0.002)
    reader.join()
    assert progress.read() == (10, 10)
    done = [d for d, _ in seen]
    assert done == sorted(done) and {t for _, t in seen} == {10}  # never backwards, always the batch's total
    progress.stop = True
    progress.start(5)  # a new batch starts un-stopped
    assert progress.read() == (0, 5) and not progress.stop


def test_one_rank_agrees_with_itself():
    assert _agree(True, 1) and not _agree(False, 1)


def test_gloo_interface_for_the_node_address():
    assert _interface_for("127.0.0.1") == "lo"
    assert _interface_for("203.0.113.7") is None  # an address no interface holds
