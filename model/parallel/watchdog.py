"""A rank that stops answering brings the others down within seconds, with a message, instead of a hang.

NCCL waits for a dead peer until its collective timeout (minutes), and a follower waits for rank 0's next
step for as long as rank 0 is idle. So each rank runs a `Watchdog` thread: every `interval` seconds it bumps
its own counter in the launcher's store (torchrun's, through MASTER_ADDR/MASTER_PORT) and reads its peers'.
A peer whose counter has not moved for `timeout` seconds, without having said it finished, or a store that
no longer answers (the launcher or the rank hosting it is gone), ends this process with a message naming
the rank. The thread runs while the main thread waits inside a collective (those release the GIL).
A dead process is usually caught sooner: gloo collectives fail as soon as a peer's sockets close, and
torchrun ends the other workers when one exits with an error.
"""
import os
import threading
import time
from datetime import timedelta

import torch.distributed as dist

from .leader import fatal

TIMEOUT_VARIABLE, DEFAULT_TIMEOUT = "GPT_OSS_TRITON_PEER_TIMEOUT", 15.0


def peer_timeout() -> float:
    """Seconds of silence after which a peer counts as gone: $GPT_OSS_TRITON_PEER_TIMEOUT, else 15."""
    raw = os.environ.get(TIMEOUT_VARIABLE, str(DEFAULT_TIMEOUT))
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"{TIMEOUT_VARIABLE} must be a positive number of seconds, got {raw!r}")
    return value


class Watchdog:
    def __init__(self, parallel, store=None, interval: float = 1.0, timeout: float | None = None):
        self.parallel, self.interval = parallel, interval
        self.timeout = peer_timeout() if timeout is None else timeout
        self.store = dist.PrefixStore("gpt_oss_triton/watchdog/", store or _store(interval))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gpt-oss-watchdog", daemon=True)

    def start(self) -> "Watchdog":
        self._thread.start()
        return self

    def stop(self) -> None:
        """This rank is done: peers must not take its silence for a failure."""
        self._stop.set()
        self._thread.join()
        try:
            self.store.set(f"done/{self.parallel.rank}", "1")
        except Exception:  # noqa: BLE001: the store may be gone at exit; nobody is left to warn
            pass

    def _run(self) -> None:
        me, peers = self.parallel.rank, [r for r in range(self.parallel.world_size) if r != self.parallel.rank]
        seen = {r: (None, time.monotonic()) for r in peers}
        while not self._stop.wait(self.interval):
            try:
                self.store.add(f"beat/{me}", 1)
                now = time.monotonic()
                for r in peers:
                    count = self.store.add(f"beat/{r}", 0)
                    last, since = seen[r]
                    if count != last:
                        seen[r] = (count, now)
                    elif now - since > self.timeout and not self.store.check([f"done/{r}"]):
                        fatal(self.parallel, f"rank {r} stopped answering ({self.timeout:.0f} s without a "
                                             "heartbeat): it failed, was killed or hangs; stopping")
            except Exception as e:  # noqa: BLE001: any store failure means the job is gone
                if not self._stop.is_set():
                    fatal(self.parallel, f"lost the launcher's store ({type(e).__name__}: {e}): another rank or "
                                         "the launcher has gone; stopping")


def _store(interval: float):
    """A client of the job's store of its own (the process group's may be busy), short timeouts."""
    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if addr and port:
        return dist.TCPStore(addr, int(port), is_master=False, timeout=timedelta(seconds=max(5.0, 5 * interval)))
    return dist.distributed_c10d._get_default_store()
