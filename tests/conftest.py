import os
import sys

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _free_leftovers() -> None:
    import ray
    from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

    for pid, info in placement_group_table().items():
        if info["state"] != "REMOVED":
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

    from tests.helpers import ray_held

    if not ray.is_initialized():
        return
    held = ray_held()
    if held:
        _free_leftovers()
    ray.shutdown()
    if held:
        pytest.fail("this module left Ray resources held: " + "; ".join(held), pytrace=False)
