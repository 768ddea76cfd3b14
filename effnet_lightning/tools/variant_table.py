"""Training and evaluation resolution, parameters and GMACs (at the evaluation resolution) of
every variant, counted on the built network.

python -m effnet_lightning.tools.variant_table [--phi 1.5] [--alpha 1.2 --beta 1.1 --gamma 1.15]
"""

from __future__ import annotations

import argparse

from effnet_lightning.models.efficientnet import count_gmacs, count_parameters
from effnet_lightning.models.factory import create_model
from effnet_lightning.models.scaling import ALPHA, BETA, GAMMA, VARIANTS, build_architecture, from_phi


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m effnet_lightning.tools.variant_table",
        description="Resolution, parameters and GMACs (multiply-adds) of every variant, counted on the model.",
    )
    parser.add_argument("--phi", type=float, action="append", default=[], help="also report a custom phi")
    parser.add_argument("--alpha", type=float, default=ALPHA)
    parser.add_argument("--beta", type=float, default=BETA)
    parser.add_argument("--gamma", type=float, default=GAMMA)
    parser.add_argument("--num-classes", type=int, default=1000)
    args = parser.parse_args(argv)

    variants = list(VARIANTS.values()) + [from_phi(p, args.alpha, args.beta, args.gamma) for p in args.phi]
    header = f"{'variant':<10}{'width':>7}{'depth':>7}{'train':>6}{'res':>6}{'dropout':>9}{'blocks':>8}{'params':>14}"
    print(f"{header}{'GMACs':>9}")
    for v in variants:
        model = create_model(v, num_classes=args.num_classes)
        n_blocks = len(build_architecture(v).blocks)
        gmacs = count_gmacs(model, v.resolution)
        print(
            f"{v.name:<10}{v.width:>7.3f}{v.depth:>7.3f}{v.train_resolution or v.resolution:>6}{v.resolution:>6}"
            f"{v.dropout:>9.2f}{n_blocks:>8}"
            f"{count_parameters(model):>14,}{gmacs:>9.3f}"
        )


if __name__ == "__main__":
    main()
