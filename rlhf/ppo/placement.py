"""Where each role's workers run: one placement group, bundles shared by colocated roles.

As in OpenRLHF's ``PPORayActorGroup`` (openrlhf/trainer/ray/launcher.py): every worker of a role is pinned to a
bundle; roles that colocate (actor + reference, critic + reward) put worker i of each on the same bundle i and
ask for a fraction of its CPU/GPU, so one host (one core, one GPU) serves both; ``colocate_all`` puts all four roles
on every bundle (OpenRLHF's ``colocate_all_models``), so N GPUs serve the whole PPO loop.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlhf.errors import UserError
from rlhf.ppo.config import PPOResourcesSection

ROLES = ("actor", "ref", "critic", "reward")


@dataclass(frozen=True)
class Slot:
    """One worker's share of a bundle."""

    bundle: int
    cpus: float
    gpus: float


def plan(res: PPOResourcesSection, use_gpu: bool,
         with_critic: bool = True, skip: tuple[str, ...] = ()) -> tuple[list[dict[str, float]], dict[str, list[Slot]]]:
    """(bundles, slots per role). Each host set gets ``workers`` bundles; its roles split each bundle evenly.
    ``with_critic`` False (a critic-free estimator): no critic slots or bundles; the reward workers get whole bundles.

    ``skip`` names roles that do not run. E.g. actor 2 workers colocated with ref, critic and reward 1 each, not colocated, 1 CPU per bundle:
    bundles [1, 1, 1, 1]; actor -> bundles 0, 1 at 0.5 CPU; ref -> 0, 1 at 0.5; critic -> 2 at 1; reward -> 3 at 1.
    """
    counts = {"actor": res.actor_workers, "ref": res.ref_workers, "critic": res.critic_workers,
              "reward": res.reward_workers}
    hosts: list[tuple[str, ...]] = []
    if not with_critic:
        skip = tuple(skip) + ("critic",)
    if res.colocate_all:
        hosts.append(("actor", "ref", "critic", "reward"))
    else:
        hosts.append(("actor", "ref") if res.colocate_actor_ref else ("actor",))
        if not res.colocate_actor_ref:
            hosts.append(("ref",))
        hosts.append(("critic", "reward") if res.colocate_critic_reward else ("critic",))
        if not res.colocate_critic_reward:
            hosts.append(("reward",))
    # A role that does not run (``skip``: the critic of a critic-free estimator, the reference under LoRA) takes no
    # bundle and no share of one.
    hosts = [kept for kept in (tuple(r for r in roles if r not in skip) for roles in hosts) if kept]
    bundle: dict[str, float] = {"CPU": res.cpus_per_bundle}
    if use_gpu:
        bundle["GPU"] = res.gpus_per_bundle
    bundles: list[dict[str, float]] = []
    slots: dict[str, list[Slot]] = {}
    for roles in hosts:
        n = counts[roles[0]]
        first = len(bundles)
        bundles.extend(dict(bundle) for _ in range(n))
        share = 1.0 / len(roles)
        for role in roles:
            slots[role] = [Slot(first + i, res.cpus_per_bundle * share, (res.gpus_per_bundle if use_gpu else 0.0) * share)
                           for i in range(n)]
    return bundles, slots


def create_placement_group(bundles: list[dict[str, float]], timeout_s: float = 120.0):
    """Reserve the bundles (PACK: on as few nodes as fit); a UserError-worthy hang becomes a clear RuntimeError."""
    import ray
    from ray.util.placement_group import placement_group

    total = {k: sum(b.get(k, 0) for b in bundles) for k in ("CPU", "GPU")}
    have = ray.cluster_resources()
    if any(total[k] > have.get(k, 0) for k in total):
        raise UserError(f"ppo: the roles need {total} but the Ray cluster has only CPU={have.get('CPU', 0)}, "
                        f"GPU={have.get('GPU', 0)}; lower resources.cpus_per_bundle, workers, or colocate roles")
    pg = placement_group(bundles, strategy="PACK")
    ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
    if not ready:
        # A pending group left behind would later take the bundles and starve every job after this one.
        from ray.util.placement_group import remove_placement_group

        remove_placement_group(pg)
        raise RuntimeError(
            f"ppo: could not reserve {len(bundles)} bundles ({total}) in {timeout_s:.0f} s; the cluster has "
            f"{ray.available_resources()}; lower resources.cpus_per_bundle or colocate roles"
        )
    return pg


def scheduling(pg, slot: Slot) -> dict:
    """Ray ``.options(...)`` that pin a worker to its bundle with its share of CPU/GPU."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return {
        "num_cpus": slot.cpus,
        "num_gpus": slot.gpus,
        "scheduling_strategy": PlacementGroupSchedulingStrategy(
            placement_group=pg, placement_group_bundle_index=slot.bundle, placement_group_capture_child_tasks=True
        ),
    }
