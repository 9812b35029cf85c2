import pytest
import torch

from suite.encoders import create_encoder


def test_poisson_rate_matches_intensity_and_is_seeded():
    x = torch.tensor([[0.0, 0.25, 0.5, 1.0]])
    enc = create_encoder("poisson")
    s = enc(x, 4000, torch.Generator().manual_seed(1))
    assert s.shape == (4000, 1, 4)
    assert set(s.unique().tolist()) <= {0.0, 1.0}
    rate = s.mean(0)[0]
    assert torch.allclose(rate, x[0], atol=0.03)
    assert rate[0] == 0 and rate[3] == 1
    s2 = enc(x, 4000, torch.Generator().manual_seed(1))
    assert torch.equal(s, s2)
    # causal: the first t steps of a T-step encoding equal a t-step one from the same seed
    assert torch.equal(enc(x, 10, torch.Generator().manual_seed(1)), s[:10])


def test_direct_repeats_the_input():
    x = torch.rand(3, 5)
    s = create_encoder("direct")(x, 6)
    assert s.shape == (6, 3, 5) and torch.equal(s[4], x)


def test_time_to_first_spike():
    x = torch.tensor([[1.0, 0.5, 0.0, 0.2]])
    enc = create_encoder("ttfs")
    t = enc.spike_times(x, 11)
    assert t.tolist() == [[0.0, 5.0, 11.0, 8.0]]   # zero input never fires (time = T)
    s = enc(x, 11)
    assert s.sum(0).tolist() == [[1.0, 1.0, 0.0, 1.0]]
    assert s[5, 0, 1] == 1


def test_unknown_encoder_lists_valid():
    with pytest.raises(ValueError, match="valid: direct, events, poisson, ttfs"):
        create_encoder("rate")
