"""Write the frozen evaluation sets shipped in ``mosgeo_lora/finetune/data/eval_sets/``.

Deterministic: running it again reproduces the files byte for byte (eval problems come from
seed ``mosgeo_lora.finetune.data.EVAL_SEED``, a seed training never uses).

    python examples/make_eval_sets.py              # all sets, 100 problems each
    python examples/make_eval_sets.py --n 50 --out /tmp/sets numbers__place_value
    python examples/make_eval_sets.py --check      # exit 1 if a shipped file is out of date
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from mosgeo_lora.finetune.data import EVAL_DIR, EVAL_SET_SIZE, EVAL_SETS, make_eval_set, to_jsonl


def render_eval_set(name: str, n: int = EVAL_SET_SIZE) -> str:
    """The exact JSONL text of eval set `name` with `n` problems."""
    return to_jsonl(make_eval_set(name, n))


def write_eval_sets(names: Sequence[str], n: int, out_dir: Path) -> list[Path]:
    """Write ``<out_dir>/<name>.jsonl`` for each name; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        path = out_dir / f"{name}.jsonl"
        # newline="" keeps '\n' endings on every platform, so files compare byte for byte
        with path.open("w", encoding="utf-8", newline="") as f:
            f.write(render_eval_set(name, n))
        paths.append(path)
    return paths


def stale_eval_sets(names: Sequence[str], n: int, out_dir: Path) -> list[str]:
    """Names whose file in `out_dir` differs from what this script would write."""
    return [
        name
        for name in names
        if not (out_dir / f"{name}.jsonl").is_file()
        or (out_dir / f"{name}.jsonl").read_bytes() != render_eval_set(name, n).encode()
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=list(EVAL_SETS), help="eval sets to write")
    parser.add_argument("--n", type=int, default=EVAL_SET_SIZE, help="problems per set")
    parser.add_argument("--out", type=Path, default=EVAL_DIR, help="output folder")
    parser.add_argument("--check", action="store_true", help="only compare, write nothing")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_eval_sets(args.names, args.n, args.out)
        print("out of date: " + ", ".join(stale) if stale else "all eval sets up to date")
        return 1 if stale else 0
    for path in write_eval_sets(args.names, args.n, args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
