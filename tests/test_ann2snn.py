"""ann2snn: rates of the converted SNN approach the ANN's activations, predictions agree with the
ANN at large T, residual timm networks convert, unconvertible layers are named, and the rule runs
end to end through the host (calibration buffer, op counts, row extras)."""
import pytest
import torch
from torch import nn

from suite.archs import ArchSpec
from suite.baselines.ann2snn import ConvertibleANN
from suite.baselines.cnn import TimmArch
from suite.baselines.conversion import (ConversionError, SteppedIF, SteppedOpCounter, check_convertible,
                                        convert)
from suite.rule import Context, check_options
from suite.train import Cell, run_cell

TINY_MLP = ArchSpec("tiny_mlp", "32-32")
TINY_RESNET = TimmArch("tiny_resnet", model="resnet18", cifar_stem=True,
                       model_args=(("layers", (1, 1, 1, 1)), ("channels", (4, 8, 8, 16)), ("stem_type", "deep"),
                                   ("stem_width", 4)))


def _train(host, arch, epochs, **options):
    """Train the ANN with the rule's own train_step (which also fills the calibration buffer)."""
    torch.manual_seed(0)
    rule, data = host.rule("ann2snn"), host.dataset("digits")
    train = data.load("train")
    hp = check_options(rule, options)
    model = rule.build(arch, data.input_shape, data.n_classes, "torch", hp)
    ctx = Context(hp=hp, T=1, timesteps=(1,), arch=arch, dataset="digits", input_shape=data.input_shape,
                  n_classes=10, epochs=epochs, steps_per_epoch=23)
    opt, sched, _ = rule.configure_optimizer(model, ctx)
    order = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(train), generator=order).split(64):
            rule.train_step(model, (train.x[idx], train.y[idx]), opt, ctx)
        sched.step()
    return rule, model.eval(), ctx


@torch.no_grad()
def _rates_vs_activations(rule, model, ctx, x, Ts):
    """Per T: mean |lambda * rate - min(a, lambda)| / lambda per ReLU layer, and the SNN's output
    per step; plus the ANN's logits."""
    snn = model.converted()
    acts, spikes, handles = {}, {}, []
    for name, m in model.ann.named_modules():
        if isinstance(m, nn.ReLU):
            handles.append(m.register_forward_hook(lambda m, i, o, name=name: acts.__setitem__(name, o.clone())))
    for name, m in snn.net.named_modules():
        if isinstance(m, SteppedIF):
            spikes[name] = []
            handles.append(m.register_forward_hook(lambda m, i, o, name=name: spikes[name].append(o.clone())))
    logits = model.ann(x)
    out = rule.forward(model, x, max(Ts), ctx)
    for h in handles:
        h.remove()
    assert set(spikes) == set(acts) == set(snn.lambdas)  # every ReLU became an IF neuron of the same name
    errors = {}
    for T in Ts:
        errors[T] = {}
        for name, a in acts.items():
            lam = snn.lambdas[name]
            rate = torch.stack(spikes[name][:T]).sum(0) / T
            errors[T][name] = float((lam * rate - a.clamp(max=lam)).abs().mean() / lam)
    return errors, out, logits


@pytest.fixture(scope="module")
def tiny_mlp(host):
    # two hidden layers with BN (folded), max-norm
    return _train(host, TINY_MLP, 12, batch_norm=True, percentile=100.0, calibration_samples=512)


def test_rate_error_shrinks_with_T_and_predictions_agree(host, tiny_mlp):
    rule, model, ctx = tiny_mlp
    x = host.dataset("digits").load("test").x[:120]
    Ts = (4, 16, 64, 256)
    errors, out, logits = _rates_vs_activations(rule, model, ctx, x, Ts)
    for name in errors[Ts[0]]:
        per_T = [errors[T][name] for T in Ts]
        assert all(a > b for a, b in zip(per_T, per_T[1:])), (name, per_T)
        assert per_T[-1] < 0.1 * per_T[0], (name, per_T)
    # the accumulated output estimates the ANN's logits, better with T
    logit_err = [float((out[:T].mean(0) - logits).abs().mean()) for T in Ts]
    assert all(a > b for a, b in zip(logit_err, logit_err[1:])), logit_err
    agree = (out.cumsum(0)[-1].argmax(-1) == logits.argmax(-1)).float().mean()
    assert agree >= 0.99


def test_evaluate_reads_every_T_from_one_simulation_and_records_agreement(host, tiny_mlp):
    rule, model, ctx = tiny_mlp
    test = host.dataset("digits").load("test")
    with torch.no_grad():
        logits = rule.evaluate(model, test.x, (8, 256), ctx)
        ann_pred = model.ann(test.x).argmax(-1)
        alone = rule.evaluate(model, test.x, (8,), ctx)
    assert logits.shape == (2, len(test.y), 10)
    assert torch.allclose(logits[0], alone[0])  # causal: T=8 read from the T=256 pass equals an 8-step run
    assert (logits[1].argmax(-1) == ann_pred).float().mean() >= 0.99
    hit, n = model._cache["agreement"][256]
    assert n == len(test.y) and hit / n >= 0.99


def test_percentile_normalisation_is_below_max(host, tiny_mlp):
    _, model, _ = tiny_mlp
    calib = model.calibration_data()
    lam_max = convert(model.ann, calib, 100.0).lambdas
    lam_p = convert(model.ann, calib, 99.0).lambdas
    assert set(lam_max) == set(lam_p) and all(0 < lam_p[k] <= lam_max[k] for k in lam_max)
    assert any(lam_p[k] < lam_max[k] for k in lam_max)
    with pytest.raises(ValueError, match="percentile"):
        convert(model.ann, calib, 0.0)


def test_timm_resnet_converts_with_residual_scaling(host):
    # conv, BN folding, identity and 1x1-conv shortcuts, global average pooling
    rule, model, ctx = _train(host, TINY_RESNET, 2, percentile=100.0, calibration_samples=256)
    x = host.dataset("digits").load("test").x[:48]
    Ts = (16, 48, 144)
    errors, out, logits = _rates_vs_activations(rule, model, ctx, x, Ts)
    assert len(errors[16]) == 9  # stem + 2 per block x 4 blocks
    for name in errors[16]:
        per_T = [errors[T][name] for T in Ts]
        assert all(a > b for a, b in zip(per_T, per_T[1:])), (name, per_T)
    logit_err = [float((out[:T].mean(0) - logits).abs().mean()) for T in Ts]
    assert logit_err[-1] < 0.5 * logit_err[0], logit_err


def test_if_neuron_resets_by_subtraction():
    # constant current 5/8 for 7 steps, threshold 1 (exact binary fractions, no tie at threshold):
    # subtraction keeps the overshoot, 4 spikes and 7 * 5/8 - 4 = 3/8 left in the membrane;
    # reset to zero would fire only 3 times (every second step)
    n = SteppedIF()
    spikes = [int(n(torch.full((1,), 0.625))) for _ in range(7)]
    assert spikes == [0, 1, 0, 1, 1, 0, 1] and float(n.v) == 0.375
    n.reset_state()
    assert int(n(torch.full((1,), 2.5))) == 1 and float(n.v) == 1.5  # at most one spike per step


def test_calibration_buffer_keeps_the_last_inputs():
    m = ConvertibleANN(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), (1, 2, 2), 5, 99.9)
    assert len(m.calibration_data()) == 0
    with pytest.raises(ValueError, match="calibration inputs"):
        m.converted()
    batches = [torch.full((3, 1, 2, 2), float(i)) for i in range(3)]
    for b in batches:
        m.remember(b)
    kept = sorted(float(v) for v in m.calibration_data()[:, 0, 0, 0])
    assert kept == [1.0, 1.0, 1.0, 2.0, 2.0] or kept == [1.0, 1.0, 2.0, 2.0, 2.0]
    assert int(m.calibration_seen) == 9 and "calibration" in m.state_dict()  # checkpointed with the model


@pytest.mark.parametrize("build, message", [
    (lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2)),
     r"layer '2' \(MaxPool2d\) cannot be converted.*average pooling"),
    (lambda: nn.Sequential(nn.Linear(4, 3), nn.GELU(), nn.Linear(3, 2)),
     r"layer '1' \(GELU\) cannot be converted to IF neurons"),
    (lambda: nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.BatchNorm1d(3), nn.Linear(3, 2)),
     r"layer '2' \(BatchNorm1d\) cannot be folded"),
])
def test_unconvertible_layer_is_named(build, message):
    with pytest.raises(ConversionError, match=message):
        check_convertible(build())


def test_unconvertible_arch_fails_before_training(host):
    host.archs["tiny_maxpool"] = ArchSpec("tiny_maxpool", "4C3p1-M2-16")
    try:
        rows = run_cell(Cell("ann2snn", "digits", "tiny_maxpool", epochs=1, timesteps=(2,)), host)
    finally:
        del host.archs["tiny_maxpool"]
    assert rows[0]["status"] == "failed" and "layer '2' (MaxPool2d) cannot be converted" in rows[0]["error"]


def test_run_cell_rows_count_ops_and_record_conversion(host):
    rows = run_cell(Cell("ann2snn", "digits", "mlp128", epochs=3, timesteps=(1, 4, 16), limit_test=100,
                         options=(("calibration_samples", 256),)), host)
    assert [r["status"] for r in rows] == ["ok"] * 3, rows[0].get("error")
    by_T = {r["T"]: r for r in rows}
    # analog input: the first layer does 64 x 128 MACs at every step; spikes drive the classifier
    assert by_T[16]["macs"] == pytest.approx(16 * 64 * 128)
    assert 0 < by_T[4]["synops"] < by_T[16]["synops"]
    extra = by_T[16]["extra"]
    assert extra["conversion"]["percentile"] == 99.9 and extra["conversion"]["calibration_samples"] == 256
    assert set(extra["conversion"]["lambdas"]) == {"2"}
    assert 0 < extra["spike_rates"]["net.2"] < 1
    assert by_T[16]["accuracy"] > 0.7
    # the SNN approaches the ANN it was converted from as T grows
    agreement = [by_T[T]["extra"]["ann_agreement"] for T in (1, 4, 16)]
    assert agreement[0] < agreement[2] and agreement[2] > 0.8, agreement


def test_ann_agreement_is_the_fraction_of_test_samples_where_snn_and_ann_agree(host):
    from suite.baselines.ann2snn import conversion_metrics

    rule, arch = host.rule("ann2snn"), host.arch("mlp128")
    hp = check_options(rule, {"calibration_samples": 64})
    ctx = Context(hp=hp, T=4, timesteps=(1, 4), arch=arch, dataset="digits", input_shape=(1, 8, 8), n_classes=10)
    torch.manual_seed(3)
    model = rule.build(arch, (1, 8, 8), 10, "torch", hp)
    data = host.dataset("digits").load("train")
    model.remember(data.x[:64])
    model.eval()
    x = data.x[64:164]
    with torch.no_grad():
        snn = torch.cat([rule.evaluate(model, x[:40], (1, 4), ctx), rule.evaluate(model, x[40:], (1, 4), ctx)], 1)
        ann = model.ann(x).argmax(-1)
    by_hand = [int((snn[k].argmax(-1) == ann).sum()) / len(x) for k in range(2)]
    got = [conversion_metrics(model, rule, ctx, {"T": T})["ann_agreement"] for T in (1, 4)]
    assert got == pytest.approx(by_hand, abs=1e-12)
    assert any(0 < a < 1 for a in got), got   # the check can tell agreement from disagreement


def test_stepped_op_counter_when_batch_equals_T():
    # a [B, ...] spike output with B == T must be read as one step, not as [T, B]
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    calib = torch.rand(32, 3)
    snn = convert(net, calib, 100.0)
    x = calib[:8]
    with SteppedOpCounter(snn, 8, 8) as oc:
        with torch.no_grad():
            snn(x.unsqueeze(0).expand(8, *x.shape))
    spikes = {}
    h = snn.net.get_submodule("1").register_forward_hook(lambda m, i, o: spikes.setdefault("n", []).append(o))
    with torch.no_grad():
        snn(x.unsqueeze(0).expand(8, *x.shape))
    h.remove()
    total = float(torch.stack(spikes["n"]).sum()) / 8
    assert oc.at(8)["spikes_per_sample"] == pytest.approx(total)
    assert oc.at(8)["spike_rates"]["net.1"] == pytest.approx(total / (4 * 8))


@pytest.mark.parametrize("arch, shape", [("fc800", (1, 28, 28)), ("convnet", (1, 28, 28)), ("lenet5", (1, 28, 28)),
                                         ("timm_resnet18w16_cifar", (3, 32, 32)), ("timm_resnet18_cifar", (3, 32, 32))])
def test_registered_archs_convert(host, arch, shape):
    rule = host.rule("ann2snn")
    hp = check_options(rule, {"calibration_samples": 4})
    model = rule.build(host.arch(arch), shape, 10, "torch", hp)
    model.remember(torch.rand(4, *shape))
    model.eval()
    snn = model.converted()
    with torch.no_grad():
        out = snn(torch.rand(2, *shape).unsqueeze(0).expand(3, 2, *shape))
    assert out.shape == (3, 2, 10) and len(snn.neurons()) == len(snn.lambdas) > 0
