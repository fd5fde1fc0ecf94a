import os
import sys
import time

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _ray_leftovers() -> list[str]:
    """Placement groups and CPU reservations still held in this process's Ray instance (empty when clean)."""
    import ray
    from ray.util.placement_group import placement_group_table

    held = [f"placement group {pid} ({info['state']}, {info.get('name') or 'unnamed'})"
            for pid, info in placement_group_table().items()
            if info["state"] in ("PENDING", "CREATED", "RESCHEDULING")]
    free, total = ray.available_resources().get("CPU", 0.0), ray.cluster_resources().get("CPU", 0.0)
    if free + 1e-6 < total:
        held.append(f"{total - free:g} of {total:g} CPUs still reserved")
    return held


def _free_leftovers() -> None:
    import ray
    from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

    for pid, info in placement_group_table().items():
        if info["state"] in ("PENDING", "CREATED", "RESCHEDULING"):
            remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pid))))
    try:
        from ray import serve

        serve.shutdown()
    except Exception:  # noqa: BLE001 - best effort: Serve may never have started
        pass


@pytest.fixture(scope="module", autouse=True)
def ray_resources_released():
    """Every test module releases what it reserved in the in-process Ray instance, and the next module starts a
    fresh one.

    The suite runs in one process, so a placement group or Serve replica that a failing test leaves behind would
    starve every later job, and the suite would hang instead of failing. This fails the module that leaked (naming
    what it held), then shuts Ray down so that no state, leaked or not, crosses into the next module (costs a few
    seconds of Ray start per module that used it).
    """
    yield
    if "ray" not in sys.modules:
        return
    import ray

    if not ray.is_initialized():
        return
    deadline = time.monotonic() + 30  # actors release their CPUs asynchronously after being killed
    while (held := _ray_leftovers()) and time.monotonic() < deadline:
        time.sleep(1)
    if held:
        _free_leftovers()
    ray.shutdown()
    if held:
        pytest.fail("this module left Ray resources held: " + "; ".join(held), pytrace=False)
