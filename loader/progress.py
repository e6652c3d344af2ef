"""A minimal progress bar on stderr for long loads and writes (no dependency)."""
import sys
import time


class Progress:
    def __init__(self, total_bytes: int, label: str, enabled: bool | None = None, min_bytes: int = 1 << 30):
        self.total, self.done, self.label = total_bytes, 0, label
        self.enabled = total_bytes >= min_bytes if enabled is None else enabled
        self.start = self._last = time.perf_counter()

    def advance(self, nbytes: int) -> None:
        self.done += nbytes
        now = time.perf_counter()
        if self.enabled and (now - self._last > 0.2 or self.done >= self.total):
            self._last = now
            frac = self.done / max(self.total, 1)
            bar = "#" * int(30 * frac)
            rate = self.done / max(now - self.start, 1e-9) / 1e9
            sys.stderr.write(f"\r{self.label} [{bar:<30}] {frac:6.1%} {self.done / 1e9:.2f}/{self.total / 1e9:.2f} GB "
                             f"{rate:.2f} GB/s")
            if self.done >= self.total:
                sys.stderr.write("\n")
            sys.stderr.flush()
