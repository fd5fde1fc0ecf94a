"""A role's workers as one object: start them on their bundles, form their process group, fan calls out, gather.

Calls return Ray object refs so the controller can run several roles at once (e.g. ref log-probs, critic values
and rewards in parallel, OpenRLHF's ``make_experience`` does the same) and wait on all of them together.
"""

from __future__ import annotations

from typing import Any, Sequence

from rlhf.ppo.experience import select_rows, shards
from rlhf.ppo.placement import Slot, scheduling


class RoleGroup:
    def __init__(self, name: str, worker_cls: type, spec: Any, slots: Sequence[Slot], pg) -> None:
        import ray

        self.name = name
        remote_cls = ray.remote(worker_cls)
        self.workers = [remote_cls.options(**scheduling(pg, slot)).remote(spec, rank, len(slots))
                        for rank, slot in enumerate(slots)]

    def start_join(self) -> list:
        """Form the group's process group and set up every worker; returns refs (join several groups at once)."""
        import ray

        addr, port = ray.get(self.workers[0].address.remote())
        return [w.join.remote(addr, port) for w in self.workers]

    def __len__(self) -> int:
        return len(self.workers)

    def submit(self, method: str, *args: Any) -> list:
        """Every worker runs ``method(*args)``; returns one ref per worker."""
        return [getattr(w, method).remote(*args) for w in self.workers]

    def submit_sharded(self, method: str, rows: Any, *args: Any, extra_rows: Sequence[Any] = ()) -> list:
        """Worker i runs ``method(shard_i(rows), *shard_i(extra_rows), *args)``: contiguous equal row shards.

        ``rows`` and each of ``extra_rows`` is a list or a dataclass of row-wise tensors.
        """
        n = len(rows)
        refs = []
        for w, part in zip(self.workers, shards(n, len(self.workers))):
            head = [take(rows, part)] + [take(x, part) for x in extra_rows]
            refs.append(getattr(w, method).remote(*head, *args))
        return refs

    def kill(self) -> None:
        import ray

        for w in self.workers:
            ray.kill(w, no_restart=True)


def take(rows: Any, part: slice) -> Any:
    return rows[part] if isinstance(rows, list) else select_rows(rows, part)
