"""Memory and time limits of the processes the service starts: each job's process group and each
upload checker.

Where the machine has cgroup v2 and the service may manage its own part of it (a container of its
own, a systemd unit with ``Delegate=yes``), every contained process tree gets a cgroup with
``memory.max`` and no swap, and the kernel counts and enforces. Elsewhere the limits are rlimits
and a watchdog:

- ``RLIMIT_AS`` per process, at the limit plus ``AS_HEADROOM``: torch and its allocators map far
  more address space than they use (a tiny run peaked at 640 MB resident and 2.5 GB mapped), so the
  address space is only the backstop against one huge allocation; CUDA processes get none (CUDA
  maps tens of GB it never touches);
- ``RLIMIT_CPU`` as the backstop of the wall-clock limit (the time limit times the cores);
- ``group_memory``: the proportional set size of a process group, summed by the caller's watchdog
  twice a second, which stops the group when it passes the limit.
"""

from __future__ import annotations

import errno
import os
import resource
from pathlib import Path
from typing import Callable

AS_HEADROOM = 3 << 30
"""Address space a contained process may map beyond its memory limit (see the module docstring)."""
CGROUP_ENV = "TEXTFT_CGROUP"
"""Where a service that manages cgroups tells its supervisors to create theirs."""
ALLOCATION_FAILURES = ("MemoryError", "can't allocate memory", "Cannot allocate memory", "std::bad_alloc",
                       "out of memory", "OutOfMemoryError")
"""How a process that hit its address-space limit says so."""


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def process_memory(pid: int) -> int:
    """Bytes of memory ``pid`` uses: its proportional set size (shared pages divided among their
    users, so a group's sum counts them once), else its resident set; 0 if it is gone."""
    for line in _read(Path(f"/proc/{pid}/smaps_rollup")).splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    fields = _read(Path(f"/proc/{pid}/statm")).split()
    return int(fields[1]) * os.sysconf("SC_PAGE_SIZE") if len(fields) > 1 else 0


def group_members(pgid: int) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            stat = _read(proc / "stat")
            try:
                if stat and int(stat[stat.rindex(")") + 2:].split()[2]) == pgid:
                    pids.append(int(proc.name))
            except (ValueError, IndexError):
                continue
    return pids


def group_memory(pgid: int) -> int:
    """Bytes of memory the processes of group ``pgid`` use together."""
    return sum(process_memory(pid) for pid in group_members(pgid))


def gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def duration(seconds: float) -> str:
    """``90 s``, ``25 min``, ``2 h``, ``1.5 h``: a limit as people say it."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.3g} min"
    return f"{seconds / 3600:.3g} h"


def rlimits(memory_bytes: int | None, cpu_seconds: float | None, address_space: bool = True) -> Callable[[], None]:
    """A ``preexec_fn`` that sets the backstop rlimits in the child (inherited by everything it starts)."""
    def apply() -> None:
        if memory_bytes and address_space:
            _lower(resource.RLIMIT_AS, memory_bytes + AS_HEADROOM)
        if cpu_seconds:
            _lower(resource.RLIMIT_CPU, int(cpu_seconds) + 1)
    return apply


def _lower(which: int, value: int) -> None:
    """Set a limit, never above what this process was given (an operator's own cap stays)."""
    soft, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(which, (value, hard))


def ran_out_of_memory(log_text: str) -> bool:
    return any(marker in log_text for marker in ALLOCATION_FAILURES)


# --- cgroup v2 --------------------------------------------------------------------------------------


class Cgroups:
    """Child cgroups of the service's own cgroup, each with a memory limit (cgroup v2)."""

    def __init__(self, base: Path):
        self.base = base

    @classmethod
    def take(cls) -> "Cgroups | None":
        """Move this process into a leaf of its cgroup and enable the memory controller for siblings
        of that leaf; None (and nothing changed) where cgroup v2 or the permission is missing, or other
        processes share the cgroup."""
        line = next((ln for ln in _read(Path("/proc/self/cgroup")).splitlines() if ln.startswith("0::")), None)
        root = Path("/sys/fs/cgroup")
        if line is None or not (root / "cgroup.controllers").is_file():
            return None
        base = root / line[3:].lstrip("/")
        if "memory" not in _read(base / "cgroup.controllers").split():
            return None
        leaf = base / "textft-service"
        try:
            leaf.mkdir(exist_ok=True)
            (leaf / "cgroup.procs").write_text(str(os.getpid()))
        except OSError:
            return None
        try:
            if "memory" not in _read(base / "cgroup.subtree_control").split():
                (base / "cgroup.subtree_control").write_text("+memory")
        except OSError:  # other processes in the cgroup (EBUSY), or no permission: leave it as it was
            try:
                (base / "cgroup.procs").write_text(str(os.getpid()))
                leaf.rmdir()
            except OSError:
                pass
            return None
        return cls(base)

    def create(self, name: str, memory_bytes: int) -> Path:
        path = self.base / name
        path.mkdir(exist_ok=True)
        (path / "memory.max").write_text(str(memory_bytes))
        try:
            (path / "memory.swap.max").write_text("0")
        except OSError:
            pass  # no swap accounting: there is no swap to turn off
        return path


def join_cgroup(path: str | None) -> Callable[[], None]:
    """A ``preexec_fn`` that moves the child into cgroup ``path`` (before it runs anything)."""
    def apply() -> None:
        if path:
            with open(os.path.join(path, "cgroup.procs"), "w") as f:
                f.write("0")
    return apply


def oom_kills(path: str | Path | None) -> int:
    """Processes of cgroup ``path`` the kernel killed for passing its memory.max."""
    if not path:
        return 0
    for line in _read(Path(path) / "memory.events").splitlines():
        if line.startswith("oom_kill "):
            return int(line.split()[1])
    return 0


def remove_cgroup(path: str | Path | None) -> None:
    if path:
        try:
            Path(path).rmdir()
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.EBUSY):
                raise
