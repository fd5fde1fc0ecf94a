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
    """Every test module releases what it reserved in the in-process Ray instance, which the modules share.

    The suite runs in one process, so a placement group or Serve replica that a failing test leaves behind would
    starve every later job, and the suite would hang instead of failing. After each module this waits for every CPU
    to be free and no placement group to remain; if something is still held it frees it, shuts Ray down (the next
    module starts a fresh instance) and fails the module that leaked, naming what it held. A clean module leaves Ray
    running for the next one: starting and stopping it per module cost ~6 s each, ~2 min over the suite. Workers
    get their environment (``rlhf.engine.launch.worker_env``) when Ray starts; no test changes it afterwards.
    A module that started Serve has it shut down, so no HTTP proxy or controller crosses modules.
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
        pytest.fail("this module left Ray resources held: " + "; ".join(held), pytrace=False)
    if "ray.serve" in sys.modules:
        from ray import serve

        try:
            serve.shutdown()
        except Exception:  # noqa: BLE001 - best effort: Serve may never have started on this instance
            pass
