"""Depth: the resnet family (suite/archs.py) -- one spec built as SNN and CNN twin for every input
shape, exact op counts of the residual joins, exact BN folding and conversion of residual blocks,
and a training step through run_cell for surrogate_bptt_bn, ann2snn and cnn."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from suite.archs import ResidualAdd, ResNetArch, build_network
from suite.gradnorms import GradNorms
from suite.baselines.conversion import SteppedIF, convert, fold_batchnorm, trace
from suite.opcount import OpCounter
from suite.rule import Context, check_options
from suite.train import Cell, run_cell

TINY = ResNetArch("tiny_resnet", depth=8, width=2)
TINY_PLAIN = ResNetArch("tiny_plain", depth=8, width=2, residual=False)


def _snn(host, arch, shape, **options):
    rule = host.rule("surrogate_bptt_bn")
    hp = check_options(rule, options)
    return rule, rule.build(arch, shape, 10, "torch", hp), hp


def _ann(host, arch, shape):
    rule = host.rule("cnn")
    return rule.build(arch, shape, 10, "torch", check_options(rule, {}))


def _weights(model):
    return [(type(m).__name__, tuple(m.weight.shape)) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


@pytest.mark.parametrize("arch, shape", [(a, s) for a in (TINY, TINY_PLAIN) for s in ((1, 28, 28), (2, 34, 34), (3, 32, 32))]
                         + [(ResNetArch("tiny20", depth=20, width=2), (1, 28, 28))],
                         ids=lambda v: v.name if isinstance(v, ResNetArch) else "x".join(map(str, v)))
def test_snn_and_cnn_twin_from_one_spec(host, arch, shape):
    rule, snn, hp = _snn(host, arch, shape)
    ann = _ann(host, arch, shape)
    assert _weights(snn) == _weights(ann)  # the same network; only the nonlinearity differs
    convs = [w for w in _weights(ann) if w[0] == "Conv2d"]
    projections = 2 if arch.residual else 0  # 1x1 shortcuts into stages 2 and 3
    assert len(convs) == arch.depth - 1 + projections and _weights(ann)[-1] == ("Linear", (10, 4 * arch.width))
    adds = [m for m in ann.modules() if isinstance(m, ResidualAdd)]
    assert len(adds) == (3 * arch.blocks_per_stage if arch.residual else 0)
    x = torch.rand(3, *shape)
    assert ann(x).shape == (3, 10)
    ctx = Context(hp=hp, T=2, timesteps=(2,), arch=arch, dataset="test", input_shape=shape, n_classes=10)
    assert rule.forward(snn, x, 2, ctx).shape == (2, 3, 10)


def test_bad_depth_or_input_names_the_arch():
    with pytest.raises(ValueError, match=r"'resnet10'.*depth 10.*6n \+ 2"):
        ResNetArch("resnet10", depth=10)
    with pytest.raises(ValueError, match=r"'w0'.*width"):
        ResNetArch("w0", width=0)
    with pytest.raises(ValueError, match=r"'tiny_resnet'.*\[C, H, W\]"):
        build_network(TINY, (64,), 10, activation=lambda layer, shape: nn.ReLU())


def test_registered_depth_family(host):
    for name, depth, residual, bn in [("resnet8", 8, True, True), ("plain14w8_nobn", 14, False, False),
                                      ("resnet20w8", 20, True, True)]:
        a = host.arch(name)
        assert (a.family, a.depth, a.residual, a.batch_norm) == ("resnet", depth, residual, bn)
    assert host.arch("resnet14w8").width == 8
    other = {"lee_bp", "spike_bp_dropout", "sstdp", "tssl_bp"}  # the built-in rules without a resnet form
    assert other and not any(host.rule(r).supports(host.arch("resnet8"), "digits") for r in other)
    skipped = run_cell(Cell(rule="tssl_bp", dataset="digits", arch="resnet8w8", timesteps=(2,)), host)
    assert skipped[0]["status"] == "skipped" and "resnet8w8" in skipped[0]["error"]


def _captured_joins(model):
    """The shortcut operand of every ResidualAdd per call, and the conv/linear layers' inputs."""
    seen, handles = {}, []
    for name, m in model.named_modules():
        if isinstance(m, (ResidualAdd, nn.Conv2d, nn.Linear)):
            idx = 1 if isinstance(m, ResidualAdd) else 0
            handles.append(m.register_forward_hook(
                lambda m, i, o, name=name, idx=idx: seen.setdefault(name, []).append(i[idx].detach().clone())))
    return seen, handles


def test_residual_op_counts_exact_on_tiny_net(host):
    torch.manual_seed(3)
    shape, T, B = (1, 8, 8), 3, 4
    arch = ResNetArch("tiny_nobn", depth=8, width=2, batch_norm=False)
    rule, snn, hp = _snn(host, arch, shape, v_threshold=0.3)
    snn.eval()
    x = torch.rand(B, *shape)
    ctx = Context(hp=hp, T=T, timesteps=(T,), arch=arch, dataset="test", input_shape=shape, n_classes=10)
    seen, handles = _captured_joins(snn)
    with OpCounter(snn, T, B, input_events=False) as oc, torch.no_grad():
        rule.forward(snn, x, T, ctx)
    for h in handles:
        h.remove()
    ops = oc.at(T)
    joins = {k: v for k, v in ops["layers"].items() if v["kind"] == "add"}
    assert sorted(joins) == ["2.add", "3.add", "4.add"]  # stem conv, LIF, then the blocks (no BN)
    # identity shortcut (stage 1): the block's input spikes, one accumulate each
    ident = seen["2.add"][0]
    assert set(ident.unique().tolist()) <= {0.0, 1.0} and ident.sum() > 0
    assert joins["2.add"]["synops"] == float(ident.sum()) / B and joins["2.add"]["adds"] == 0
    # projection shortcuts (stages 2, 3): an analog current, one addition per element and step
    for name, c, hw in [("3.add", 4, 4), ("4.add", 8, 2)]:
        assert joins[name]["synops"] == 0 and joins[name]["adds"] == T * c * hw * hw
        assert joins[name]["dense_ops"] == T * c * hw * hw
    assert ops["adds"] == T * (4 * 16 + 8 * 4)
    assert ops["energy_breakdown"]["add"] == pytest.approx(0.9 * ops["adds"])
    # weight layers: the stem reads analog input (MACs), every other conv / the classifier spikes
    # (or average-pooled spikes): nnz x fan-out, brute force per layer
    total = 0.0
    for name, m in snn.named_modules():
        if not isinstance(m, (nn.Conv2d, nn.Linear)):
            continue
        inp = seen[name][0]
        if name == "0.module":
            assert ops["layers"][name]["macs"] == T * 2 * 8 * 8 * 9
            continue
        if isinstance(m, nn.Linear):
            events = inp * 4  # pooled 2x2 map of spikes -> counts
            expected = float(events.sum()) * 10
        else:
            expected = float(F.conv2d(inp, torch.ones_like(m.weight), None, m.stride, m.padding).sum())
        assert ops["layers"][name]["synops"] == pytest.approx(expected / B, rel=1e-6), name
        total += expected / B
    assert ops["synops"] == pytest.approx(total + float(ident.sum()) / B, rel=1e-6)
    # the CNN twin: dense MACs by hand and one addition per element at every join
    ann = _ann(host, arch, shape).eval()
    with OpCounter(ann, 1, B) as oc, torch.no_grad():
        ann(x)
    a = oc.at(None)
    macs = (2 * 64 * 9 + 2 * (2 * 64 * 18)            # stem, stage 1 (8x8, 2 channels)
            + 4 * 16 * 18 + 4 * 16 * 36 + 4 * 16 * 2  # stage 2 (4x4, 4 channels) + 1x1 shortcut
            + 8 * 4 * 36 + 8 * 4 * 72 + 8 * 4 * 4     # stage 3 (2x2, 8 channels) + 1x1 shortcut
            + 8 * 10)
    assert a["macs"] == macs and a["synops"] == 0
    assert a["adds"] == 2 * 64 + 4 * 16 + 8 * 4


def _random_bn(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return model.eval()


def test_bn_folding_is_exact_for_residual_blocks(host):
    torch.manual_seed(4)
    ann = _random_bn(_ann(host, ResNetArch("bn_resnet", depth=14, width=4), (2, 34, 34)))
    gm = trace(ann)
    fold_batchnorm(gm)
    called = [gm.get_submodule(n.target) for n in gm.graph.nodes if n.op == "call_module"]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in called)
    assert sum(isinstance(m, ResidualAdd) for m in gm.modules()) == 6  # the joins stay modules
    x = torch.rand(8, 2, 34, 34)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), ann(x), rtol=1e-5, atol=1e-5)


def test_converted_resnet_approaches_the_ann_with_T(host):
    torch.manual_seed(5)
    ann = _random_bn(_ann(host, ResNetArch("conv_resnet", depth=8, width=4), (1, 8, 8)), seed=1)
    digits = host.dataset("digits")
    calib, x = digits.load("train").x[:256], digits.load("test").x[:32]
    snn = convert(ann, calib, percentile=100.0)
    joins = {n: m for n, m in snn.net.named_modules() if isinstance(m, ResidualAdd)}
    # the identity join of stage 1 scales the incoming spikes by lambda_in / lambda_out; projection
    # shortcuts and branches are scaled through their weights
    lam = snn.lambdas
    assert joins["3.add"].scale == pytest.approx((1.0, lam["2"] / lam["3.act"]))
    assert joins["4.add"].scale == (1.0, 1.0) and joins["5.add"].scale == (1.0, 1.0)
    assert len([m for m in snn.modules() if isinstance(m, SteppedIF)]) == 7
    with torch.no_grad():
        logits = ann(x)
        out = snn(x.unsqueeze(0).expand(128, *x.shape))
    err = [float((out[:T].mean(0) - logits).abs().mean()) for T in (8, 32, 128)]
    assert err[0] > err[1] > err[2] and err[2] < 0.25 * err[0], err
    agree = float((out.mean(0).argmax(-1) == logits.argmax(-1)).float().mean())
    assert agree >= 0.9, agree


@pytest.mark.parametrize("rule, T", [("surrogate_bptt_bn", 2), ("ann2snn", 8), ("cnn", None)])
def test_resnet_trains_through_run_cell(host, rule, T):
    cell = Cell(rule=rule, dataset="digits", arch="resnet8w8", seed=0, timesteps=(T,) if T else None, epochs=1,
                batch_size=32, limit_train=64, limit_val=32, limit_test=32, select="best_val")
    rows = run_cell(cell, host)
    assert [r["status"] for r in rows] == ["ok"], rows[0].get("error")
    row = rows[0]
    assert 0.0 <= row["accuracy"] <= 1.0 and row["extra"]["history"][0]["train_loss"] > 0
    joins = {k: v for k, v in row["extra"]["layers"].items() if v["kind"] == "add"}
    assert len(joins) == 3 and row["extra"]["adds"] > 0
    norms = row["extra"]["grad_norms"]
    assert len(norms["layers"]) == 8 - 1 + 2 + 1  # depth - 1 convs, 2 projections, the classifier
    layers = list(norms["layers"].values())
    assert norms["first_last_ratio"] == pytest.approx(layers[0] / layers[-1])
    assert row["extra"]["history"][0]["grad_norm_ratio"] == norms["first_last_ratio"]
    if rule == "cnn":
        assert row["synops"] == 0 and row["macs"] > 0
    else:
        assert row["synops"] > 0


def test_grad_norms_are_epoch_means_per_layer():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    gn = GradNorms(model)
    first, last = [], []
    for scale in (1.0, 3.0):
        model.zero_grad()
        (scale * model(torch.rand(5, 3)).square().sum()).backward()
        first.append(float(model[0].weight.grad.norm()))
        last.append(float(model[2].weight.grad.norm()))
        gn.record()
    out = gn.epoch()
    assert list(out["layers"]) == ["0", "2"]
    assert out["layers"]["0"] == pytest.approx(sum(first) / 2) and out["layers"]["2"] == pytest.approx(sum(last) / 2)
    assert out["first_last_ratio"] == pytest.approx(sum(first) / sum(last))
    assert gn.epoch() is None  # reset after each epoch
    model.zero_grad(set_to_none=False)
    model[0].weight.grad = torch.ones_like(model[0].weight)
    gn.record()
    assert gn.epoch()["first_last_ratio"] is None  # no gradient reached the last layer: no ratio
    model.zero_grad(set_to_none=True)
    gn.record()  # no gradients (a rule without autograd): nothing recorded
    assert gn.epoch() is None


def test_depth_matrices_parse_and_cover_the_experiment(host):
    from pathlib import Path

    from suite.matrix import load_matrix

    root = Path(__file__).resolve().parents[1] / "benchmarks" / "comparison"
    for dataset in ("fashion_mnist", "nmnist"):
        main = load_matrix(root / f"depth-{dataset}.toml", host)
        alpha10 = load_matrix(root / f"depth-{dataset}-alpha10.toml", host)
        for m in (main, alpha10):
            assert m.select == "best_val" and m.seeds == (0, 1, 2)
            assert {e.dataset for e in m.entries} == {dataset}
            specs = {host.arch(e.arch) for e in m.entries}
            assert {(a.depth, a.residual, a.batch_norm) for a in specs} == {
                (d, r, bn) for d in (8, 14, 20) for r in (True, False) for bn in (True, False)}
        assert {e.rule for e in main.entries} == {"surrogate_bptt_bn", "cnn", "ann2snn"}
        assert {e.rule for e in alpha10.entries} == {"surrogate_bptt_bn"}
        alphas = {dict(e.options)["alpha"] for m in (main, alpha10) for e in m.entries if e.rule == "surrogate_bptt_bn"}
        assert alphas == {1.0, 10.0}
        # the two widths differ in alpha only; every other setting of the rule is the same
        opts = [{k: v for k, v in dict(e.options).items() if k != "alpha"}
                for m in (main, alpha10) for e in m.entries if e.rule == "surrogate_bptt_bn"]
        assert all(o == opts[0] for o in opts)
        # the same networks for every method of the main file
        nets = {r: {(e.dataset, e.arch) for e in main.entries if e.rule == r} for r in ("surrogate_bptt_bn", "cnn", "ann2snn")}
        assert nets["surrogate_bptt_bn"] == nets["cnn"] == nets["ann2snn"]


def test_depth_tables_pair_each_resnet_with_its_plain_twin_by_seed(tmp_path):
    from suite.reports.comparison import depth_markdown, depth_table, residual_pairs
    from suite.results import read_frame, write_cell

    def rows(arch, residual, seed, acc, ratio):
        spec = {"family": "resnet", "depth": 8, "width": 8, "residual": residual, "batch_norm": True}
        return [{"rule": "zeta", "dataset": "d", "arch": arch, "backend": "torch", "seed": seed, "T": T, "status": "ok",
                 "accuracy": acc, "val_accuracy": acc, "synops": 1.0, "macs": 0.0, "energy_pj": 1.0,
                 "train_time_s": 1.0, "epochs": 1, "cell_id": f"{arch}{seed}",
                 "extra": {"arch_spec": spec, "history": [{"epoch": 1, "grad_norm_ratio": ratio}]}} for T in (2, 4)]

    for s, (r, p) in enumerate([(0.80, 0.70), (0.82, 0.71), (0.84, 0.75)]):
        write_cell(tmp_path, f"r{s}", rows("res8", True, s, r, 2.0 ** (s + 1)))
        write_cell(tmp_path, f"p{s}", rows("plain8", False, s, p, 1.0))
    df = read_frame(tmp_path)
    dt = depth_table(df).set_index("arch")
    assert dt.loc["res8", "depth"] == 8 and dt.loc["res8", "residual"] and not dt.loc["plain8", "residual"]
    assert dt.loc["res8", "grad_ratio"] == pytest.approx(4.0)          # geometric mean of 2, 4, 8
    (pair,) = residual_pairs(df).to_dict("records")
    # differences 0.10, 0.11, 0.09: mean 0.10, sd 0.01, t(0.975, 2) = 4.303
    assert pair["diff"] == pytest.approx(0.10) and pair["ci95"] == pytest.approx(4.302653 * 0.01 / 3 ** 0.5, rel=1e-5)
    assert pair["verdict"] == "residual > plain" and (pair["residual"], pair["plain"]) == ("res8", "plain8")
    text = depth_markdown(df)
    assert "| zeta | ResNet | 82.00 ± 4.97 | 4 |" in text
    assert "- zeta, depth 8: +10.00 (+7.52 to +12.48, 3 seeds) -- residual > plain" in text


def test_depth_pairs_take_each_deeper_network_against_the_shallowest_of_its_kind(tmp_path):
    from suite.reports.comparison import depth_markdown, depth_pairs
    from suite.results import read_frame, write_cell

    def rows(arch, depth, residual, seed, acc):
        spec = {"family": "resnet", "depth": depth, "width": 8, "residual": residual, "batch_norm": True}
        return [{"rule": "zeta", "dataset": "d", "arch": arch, "backend": "torch", "seed": seed, "T": 4, "status": "ok",
                 "accuracy": acc, "val_accuracy": acc, "synops": 1.0, "macs": 0.0, "energy_pj": 1.0,
                 "train_time_s": 1.0, "epochs": 1, "cell_id": f"{arch}{seed}", "extra": {"arch_spec": spec}}]

    accs = {("res8", 8, True): (0.70, 0.72, 0.74), ("res14", 14, True): (0.80, 0.81, 0.85),
            ("res20", 20, True): (0.60, 0.70, 0.80), ("plain8", 8, False): (0.5, 0.5, 0.5)}
    for (arch, depth, res), by_seed in accs.items():
        for s, a in enumerate(by_seed):
            write_cell(tmp_path, f"{arch}{s}", rows(arch, depth, res, s, a))
    df = read_frame(tmp_path)
    got = {r["deeper"]: r for r in depth_pairs(df).to_dict("records")}
    assert set(got) == {"res14", "res20"}  # plain8 has no deeper twin; nothing pairs across kinds
    # res14 - res8: 0.10, 0.09, 0.11 -> mean 0.10, sd 0.01
    assert got["res14"]["shallower"] == "res8" and got["res14"]["diff"] == pytest.approx(0.10)
    assert got["res14"]["ci95"] == pytest.approx(4.302653 * 0.01 / 3 ** 0.5, rel=1e-5)
    assert got["res14"]["verdict"] == "deeper > shallower"
    # res20 - res8: -0.10, -0.02, +0.06 -> the interval holds zero
    assert got["res20"]["diff"] == pytest.approx(-0.02) and got["res20"]["verdict"] == "no difference shown"
    assert "- zeta, ResNet: depth 14 minus 8: +10.00 (+7.52 to +12.48, 3 seeds) -- deeper > shallower" in depth_markdown(df)


def test_depth_matrices_take_their_tunes_settings_but_the_surrogate_width(host):
    """The files that say they take a resnet8w8 tune's settings carry exactly that tune's options
    (from its committed tuned.toml), alpha (the experiment's variable) aside."""
    import tomllib
    from pathlib import Path

    from suite.matrix import load_matrix

    root = Path(__file__).resolve().parents[1] / "benchmarks"
    pairs = [("depth-nmnist.toml", "nmnist-tune"), ("depth-nmnist-alpha10.toml", "nmnist-tune"),
             ("depth-fashion_mnist-resnet-tuned.toml", "fashion_mnist-tune")]
    for matrix, tune in pairs:
        tuned = tomllib.loads((root / "results" / "depth" / tune / "tuned.toml").read_text())
        m = load_matrix(root / "comparison" / matrix, host)
        for e in m.entries:
            want = tuned["rules"][e.rule]["archs"]["resnet8w8"]["options"]
            got = dict(e.options)
            assert {k: v for k, v in got.items() if k not in ("alpha", "T")} == \
                {k: v for k, v in want.items() if k != "alpha"}, (matrix, e.rule)
