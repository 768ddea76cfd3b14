"""`python cli.py prepare`: an image folder into shards that fit, validate and test read
without listing or checking a file at start-up (see effnet_lightning/data/shards.py).

    python cli.py prepare --data.root ~/images --output_dir ~/images-shards
    python cli.py prepare --data.label_file ~/images/labels.csv --output_dir ~/images-shards
    python cli.py fit --data.root ~/images-shards
"""

from __future__ import annotations

import argparse
import sys
import time

from effnet_lightning.data.shards import SHARDS_INFO, write_shards


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python cli.py prepare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data.root", dest="root", help="the image folder (as fit's --data.root)")
    parser.add_argument(
        "--data.label_file",
        dest="label_file",
        help="a label file instead of class folders (as fit's; --data.root: the folder its paths start in)",
    )
    parser.add_argument("--output_dir", required=True, help="where the shards go (a new folder, outside the root)")
    parser.add_argument(
        "--data.val_fraction",
        dest="val_fraction",
        type=float,
        default=0.2,
        help="share of each class held out for val when the root has no val/ (0.2, as fit)",
    )
    parser.add_argument("--data.seed", dest="seed", type=int, default=42, help="seed of that split (42, as fit)")
    parser.add_argument("--num_workers", type=int, default=None, help="processes that check and write (CPU cores)")
    parser.add_argument("--chunk_bytes", default="64MB", help="size of one chunk file (64MB)")
    args = parser.parse_args(argv)
    if not args.root and not args.label_file:
        parser.error("give the images: --data.root DIR (class folders) or --data.label_file FILE.csv")
    start = time.perf_counter()
    try:
        shards = write_shards(
            args.root,
            args.output_dir,
            val_fraction=args.val_fraction,
            seed=args.seed,
            workers=args.num_workers,
            chunk_bytes=args.chunk_bytes,
            say=lambda line: print(line, file=sys.stderr),
            label_file=args.label_file,
        )
    except KeyboardInterrupt:
        print(f"prepare stopped: run the same command again to continue in {args.output_dir}", file=sys.stderr)
        sys.exit(130)
    counts = ", ".join(f"{split} {len(samples)}" for split, samples in shards.splits.items())
    print(
        f"wrote {shards.root} in {time.perf_counter() - start:.0f} s: {len(shards.class_names)} classes, images: "
        f"{counts}; {len(shards.bad_files)} unreadable files left out (listed in {shards.root / 'bad_files.txt'}); "
        f"train from it with --data.root {shards.root} (its {SHARDS_INFO} describes it)"
    )
