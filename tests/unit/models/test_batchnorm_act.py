"""BatchNorm + SiLU storing one tensor for backward (lean_bn_act): same numbers as the plain pair."""

import pytest
import torch
import torch.nn.functional as F

from effnet_lightning import create_model
from effnet_lightning.models.batchnorm_act import batch_norm_silu, can_fuse
from tests.helpers.networks import randomise_batchnorm


@pytest.mark.parametrize("channels_last", [False, True])
def test_batch_norm_silu_matches_batchnorm_then_silu(channels_last):
    torch.manual_seed(0)
    plain, lean = torch.nn.BatchNorm2d(6), torch.nn.BatchNorm2d(6)
    with torch.no_grad():
        plain.weight.uniform_(0.5, 1.5)
        plain.bias.uniform_(-0.2, 0.2)
    lean.load_state_dict(plain.state_dict())
    x = torch.randn(3, 6, 7, 5) * 2 + 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    grad = torch.randn(3, 6, 7, 5)
    x_plain, x_lean = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_plain, out_lean = F.silu(plain(x_plain)), batch_norm_silu(x_lean, lean)
    out_plain.backward(grad)
    out_lean.backward(grad)
    assert torch.allclose(out_lean, out_plain, atol=1e-6)
    assert torch.allclose(x_lean.grad, x_plain.grad, atol=1e-5)
    assert torch.allclose(lean.weight.grad, plain.weight.grad, atol=1e-5)
    assert torch.allclose(lean.bias.grad, plain.bias.grad, atol=1e-5)
    for key, value in plain.state_dict().items():  # running statistics and batch count
        assert torch.allclose(lean.state_dict()[key].float(), value.float(), atol=1e-6), key


def test_lean_network_has_the_plain_keys_outputs_and_gradients():
    torch.manual_seed(0)
    plain = randomise_batchnorm(create_model("b0", num_classes=4, drop_path_rate=0.0, dropout=0.0))
    lean = create_model("b0", num_classes=4, drop_path_rate=0.0, dropout=0.0, lean_bn_act=True)
    lean.load_state_dict(plain.state_dict())
    assert list(lean.state_dict()) == list(plain.state_dict())
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([1, 3])
    with torch.no_grad():
        assert torch.allclose(lean.eval()(x), plain.eval()(x), atol=1e-5)
    for model in (plain, lean):
        F.cross_entropy(model.train()(x), y).backward()
    # Float rounding only: some gradients (a BatchNorm shift before another BatchNorm) are ~0 plus
    # noise, so the whole gradient is compared, relative to its size.
    grad_plain = torch.cat([p.grad.flatten() for p in plain.parameters()])
    grad_lean = torch.cat([p.grad.flatten() for p in lean.parameters()])
    assert ((grad_lean - grad_plain).norm() / grad_plain.norm()).item() < 1e-5  # (1e-6 with some thread counts)


def test_lean_network_scripts_and_traces_in_training_mode():
    model = create_model(
        "b0", num_classes=2, lean_bn_act=True, drop_path_rate=0.0, dropout=0.0, zero_init_residual=False
    ).train()
    x = torch.randn(2, 3, 32, 32)
    scripted = torch.jit.script(model)
    traced = torch.jit.trace(model, x, check_trace=False)
    torch.manual_seed(0)
    expected = model(x)
    assert torch.allclose(scripted(x), expected, atol=1e-5) and torch.allclose(traced(x), expected, atol=1e-5)


def test_sync_batchnorm_keeps_its_own_path():
    bn = torch.nn.SyncBatchNorm(4).train()
    assert not can_fuse(bn, torch.randn(2, 4, 3, 3))
    assert can_fuse(torch.nn.BatchNorm2d(4).train(), torch.randn(2, 4, 3, 3))
