import pytest
import torch
import torch.nn.functional as F

from bottleneck_map.embedded_engine.model.linear import Linear, PackedWeight


@pytest.mark.parametrize("rows", [1, 7, 32, 300])
def test_linear_matches_f_linear(rows):
    torch.manual_seed(0)
    layer = Linear(64, 96, bias=True)
    x = torch.randn(rows, 64)
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)


def test_new_weights_are_used_after_an_in_place_copy():
    layer = Linear(16, 8, bias=False)
    x = torch.randn(3, 16)
    with torch.inference_mode():
        before = layer(x)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(8, 16))
    with torch.inference_mode():
        after = layer(x)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, x @ layer.weight.T, atol=1e-5, rtol=1e-5)


def test_a_replaced_weight_is_used():
    pack, x = PackedWeight(), torch.randn(2, 16)
    a, b = torch.randn(4, 16), torch.randn(4, 16)
    with torch.inference_mode():
        pack.linear(x, a)
        torch.testing.assert_close(pack.linear(x, b), x @ b.T, atol=1e-5, rtol=1e-5)


def test_other_dtypes_take_the_plain_path():
    layer = Linear(16, 8, dtype=torch.bfloat16)
    x = torch.randn(3, 16, dtype=torch.bfloat16)
    with torch.inference_mode():
        assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))
    assert layer.pack.packed is None


def test_state_dict_is_that_of_nn_linear():
    assert Linear(4, 3).state_dict().keys() == torch.nn.Linear(4, 3).state_dict().keys()
