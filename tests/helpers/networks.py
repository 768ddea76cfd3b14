"""Networks with non-trivial weights for comparisons."""

import torch


def randomise_batchnorm(model: torch.nn.Module, seed: int = 0, in_channels: int = 3, size: int = 64) -> torch.nn.Module:
    """Random BN scales and shifts, and running statistics measured on random images with them
    in place: non-trivial values, so a wrong mapping cannot hide, under which activations stay
    near unit scale and the logits depend on the input (with unit statistics that do not match
    the activations, random weights wash the input out by the head, or blow it up)."""
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    was_training = model.training
    with torch.no_grad():
        for bn in bns:
            n = bn.num_features
            bn.weight.copy_(torch.rand(n, generator=g) + 0.5)
            bn.bias.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average: the statistics of the batch below
        model.train()
        for m in model.modules():  # BatchNorm measures; dropout and stochastic depth stay off
            if not isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.training = False
        model(torch.randn(8, in_channels, size, size, generator=g))
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
    return model.train(was_training)
