import pytest
import torch

from clothret.embedding.pooling import DESCRIPTORS, MAC, GeM, SPoC, create_descriptor, gem, mac, spoc, validate_descriptors


def _fmap() -> torch.Tensor:
    x = torch.zeros(2, 3, 2, 2)
    x[0, 0] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    x[1, 2] = torch.tensor([[0.0, 0.0], [0.0, 8.0]])
    return x


def test_mac_and_spoc_on_hand_built_map():
    x = _fmap()
    assert mac(x)[0, 0] == 4.0 and mac(x)[1, 2] == 8.0
    assert spoc(x)[0, 0] == pytest.approx(2.5) and spoc(x)[1, 2] == pytest.approx(2.0)
    assert mac(x).shape == spoc(x).shape == (2, 3)


def test_gem_interpolates_between_mean_and_max():
    x = torch.rand(4, 5, 3, 3) + 0.1
    assert torch.allclose(gem(x, p=1.0), spoc(x), atol=1e-6)
    assert torch.allclose(gem(x, p=200.0), mac(x), rtol=2e-2)
    expected = (torch.tensor([1.0, 2.0, 3.0, 4.0]) ** 3).mean() ** (1 / 3)
    assert gem(_fmap(), p=3.0)[0, 0] == pytest.approx(float(expected), rel=1e-5)


def test_gem_module_learns_p():
    pool = GeM(p=3.0)
    out = pool(torch.rand(2, 4, 3, 3) + 0.1).sum()
    out.backward()
    assert pool.p.grad is not None and pool.p.grad.abs() > 0
    assert not GeM(p=2.0, learn_p=False).p.requires_grad
    with pytest.raises(ValueError, match="p must be > 0"):
        GeM(p=0.0)


def test_modules_match_functions():
    x = torch.rand(2, 3, 4, 4)
    assert torch.equal(MAC()(x), mac(x))
    assert torch.equal(SPoC()(x), spoc(x))
    assert torch.allclose(GeM(p=3.0)(x), gem(x, 3.0))


def test_registry_and_errors():
    assert set(DESCRIPTORS) == {"G", "M", "S"}
    assert isinstance(create_descriptor("G", gem_p=4.0), GeM)
    assert float(create_descriptor("G", gem_p=4.0).p.detach()) == 4.0
    assert isinstance(create_descriptor("M"), MAC) and isinstance(create_descriptor("S"), SPoC)
    with pytest.raises(ValueError, match=r"unknown descriptor 'X'.*\['G', 'M', 'S'\]"):
        create_descriptor("X")
    assert validate_descriptors("GMS") == "GMS"
    for bad in ("", "GX", "GG"):
        with pytest.raises(ValueError):
            validate_descriptors(bad)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        gem(torch.rand(2, 3))
