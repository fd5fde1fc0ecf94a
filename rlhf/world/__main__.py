"""Write the task world's files: ``python -m rlhf.world --seed 0 --out data/world``.

Writes sft.jsonl (Alpaca rows, the demonstrations), prompts_train.jsonl and prompts_heldout.jsonl (Alpaca
prompt rows with their ``task`` field for the oracle), and SOURCES.md saying how they were made.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from rlhf.errors import UserError
from rlhf.paths import resolve_path
from rlhf.world.tasks import HABITS, MAX_HABIT_RATE, World, make_world

# Sizes for the embedded CPU pipeline (2 cores, <= 15 minutes in all). 2,000 demos: ~8 epochs in the
# ~1,000 batch-16 steps a tiny model gets in a few CPU minutes, where the learning curves (tasks.py)
# flatten. 1,024 train prompts: at K=2 samples per prompt a simulated judge keeps ~200-350 pairs (the
# rest are ties), and PPO's 30 x 16 rollouts fit in them. 350 held-out prompts (50 per family): the
# accuracy's standard error is ~0.027, so +0.15 is > 5 of them, and K=2 samples give ~70-100 pairs of
# distinct oracle score for the reward model's held-out accuracy (K=4: ~140-200).
DEFAULT_DEMOS, DEFAULT_TRAIN, DEFAULT_HELDOUT, DEFAULT_DEFECT_RATE = 2000, 1024, 350, 0.4


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _sources_md(world: World, args: argparse.Namespace, command: str) -> str:
    per_family = Counter((t["family"], d or "clean") for t, d in zip(world.demo_tasks, world.demo_defects))
    families = sorted({f for f, _ in per_family})
    table = "\n".join(
        f"| {f} | {HABITS.get(f, '-')} | {sum(n for (g, _), n in per_family.items() if g == f)} | "
        + ", ".join(f"{k} {n}" for (g, k), n in sorted(per_family.items()) if g == f)
        + " |"
        for f in families
    )
    n_defective = sum(d is not None for d in world.demo_defects)
    return f"""# data/world: the task world of the embedded pipeline

Generated, not collected: every file here is written by

    {command}

(`rlhf/world/__main__.py`, seed {args.seed}); rerunning it rewrites the same bytes. The task families,
answer format and defects are documented in `rlhf/world/tasks.py`; the oracle in `rlhf/world/oracle.py`.

| file | rows | what |
|---|---|---|
| sft.jsonl | {len(world.demos)} | SFT demonstrations, Alpaca rows `{{instruction, input, output}}`; {n_defective} ({n_defective / max(len(world.demos), 1):.0%}) carry a defect |
| prompts_train.jsonl | {len(world.train_prompts)} | RM-pair and PPO prompts: `{{instruction, input, task}}` |
| prompts_heldout.jsonl | {len(world.heldout_prompts)} | evaluation prompts, disjoint from the two above |

`task` is `{{"family": ..., "args": ...}}`; `rlhf.world.oracle.oracle_score(task, response)` is 1.0 when the
stripped response is exactly the expected answer, else 0.0.

Defect rate {args.defect_rate}; habit families hold up to {MAX_HABIT_RATE:.0%} defective demos, each with one
fixed wording, so the SFT policy's most likely answer there is defective (see `tasks.py`).

| family | habit | demos | demos by defect |
|---|---|---|---|
{table}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlhf.world", description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="data/world", help="output folder (default: data/world)")
    parser.add_argument("--n-demos", type=int, default=DEFAULT_DEMOS)
    parser.add_argument("--n-train", type=int, default=DEFAULT_TRAIN)
    parser.add_argument("--n-heldout", type=int, default=DEFAULT_HELDOUT)
    parser.add_argument("--defect-rate", type=float, default=DEFAULT_DEFECT_RATE)
    args = parser.parse_args(argv)
    try:
        world = make_world(args.seed, args.n_train, args.n_heldout, args.defect_rate, n_demos=args.n_demos)
        out = resolve_path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        _write_jsonl(out / "sft.jsonl", world.demos)
        _write_jsonl(out / "prompts_train.jsonl", world.train_prompts)
        _write_jsonl(out / "prompts_heldout.jsonl", world.heldout_prompts)
        command = "python -m rlhf.world " + " ".join(argv if argv is not None else sys.argv[1:])
        (out / "SOURCES.md").write_text(_sources_md(world, args, command.strip()), encoding="utf-8")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(world.demos)} demos, {len(world.train_prompts)} train and "
          f"{len(world.heldout_prompts)} held-out prompts to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
