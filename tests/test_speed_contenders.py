"""The speed benchmarks' networks build and train for every neuron setting (no timing here: the
benchmarks live in benchmarks/speed and run alone on an idle machine)."""
import sys
from pathlib import Path

import pytest
import torch

SPEED = Path(__file__).resolve().parents[1] / "benchmarks" / "speed"
sys.path.insert(0, str(SPEED))

import contenders  # noqa: E402
import e2e_loops  # noqa: E402

#: what each peer lacks, as the speed suite's summary reports it
MISSING = {("snntorch", "rectangular"), ("norse", "atan"), ("norse", "rectangular")}


@pytest.mark.parametrize("neuron", contenders.ALL_NEURONS, ids=lambda n: n.name)
def test_every_contender_takes_a_step_at_every_neuron_setting(neuron):
    assert contenders.Neuron.parse(neuron.name) == neuron
    x, y = contenders.make_batch("fc", 3, 4)
    for name in contenders.contender_names(("torch", "fused")):
        if name in contenders.PEERS and contenders.peer_version(name) is None:
            continue
        torch.manual_seed(0)
        if (name, neuron.surrogate) in MISSING:
            with pytest.raises(contenders.Unsupported, match=neuron.surrogate):
                contenders.build(name, "fc", neuron)
            continue
        built = contenders.build(name, "fc", neuron)
        loss = contenders.make_step(built, x, y)()
        assert torch.isfinite(loss), name


def test_ours_match_the_reference_backend_in_the_speed_network():
    x, y = contenders.make_batch("fc", 4, 8)
    n = contenders.Neuron("lif", 10.0, "atan")
    outs = []
    for backend in ("torch", "fused"):
        torch.manual_seed(0)
        outs.append(contenders.build(f"ours-{backend}", "fc", n).model(x))
    assert torch.allclose(outs[0], outs[1], atol=1e-5)


def test_neuron_setting_names_are_checked():
    with pytest.raises(ValueError, match="neuron setting"):
        contenders.Neuron.parse("lif-tau2-relu")


@pytest.mark.parametrize("peer", sorted(e2e_loops.NETS))
def test_end_to_end_peer_loops_train_the_suites_network(peer):
    pytest.importorskip("spikingjelly" if peer.startswith("spikingjelly") else "snntorch")
    torch.manual_seed(0)
    net, run = e2e_loops.NETS[peer]()
    x, y = torch.rand(6, 1, 28, 28), torch.randint(0, 10, (6,))
    out = run(x, 3)
    assert out.shape == (6, 10)
    torch.nn.functional.cross_entropy(out, y).backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(p.numel() for p in net.parameters()) == 784 * 800 + 800 + 2 * 800 + 800 * 10 + 10
