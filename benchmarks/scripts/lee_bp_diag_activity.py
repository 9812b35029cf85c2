"""Short lee_bp diagnostic (not part of the suite): the mnist-cpu preset's options plus JSON
overrides, one pass over N random training samples (batch 32, seed 0), hidden/output activity
every 150 updates on 300 test digits at T = 50, then accuracy on the first 2000 test digits at
T = 50 / 200 / 1000.  Usage: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/scripts/lee_bp_diag_activity.py '{"lr": 0.0003}' 20000"""
import torch, math, sys, json, time
from suite.host import create_host
from suite.rule import Context, check_options
torch.set_num_threads(1)
over = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
ntr = int(sys.argv[2]) if len(sys.argv) > 2 else 20000
h = create_host(); rule = h.rule("lee_bp"); p = h.preset("lee_bp/mnist-cpu")
hp = check_options(rule, {**p["options"], **over}); arch = h.arch("fc800")
ds = h.dataset("mnist"); tr = ds.load("train", "/work/shared/data"); te = ds.load("test", "/work/shared/data")
g = torch.Generator().manual_seed(0)
perm = torch.randperm(len(tr), generator=g)[:ntr]
torch.manual_seed(0)
m = rule.build(arch, (1,28,28), 10, "fused", hp)
ctx = Context(hp=hp, T=hp["T"], timesteps=(hp["T"],), arch=arch, dataset="mnist", input_shape=(1,28,28), n_classes=10)
ctx.generator.manual_seed(0)
opt, sch, _ = rule.configure_optimizer(m, ctx)
B = 32
t0 = time.process_time()
def stats(tag):
    x = te.x[:300].float()
    sp,_ = m.run(rule.encode(x, 50, ctx))
    act = (sp[1].sum(0)>0).float()
    th = m.layers[0].theta.detach()
    print(tag, 'hid spk/sample %.1f act/sample %.1f ever %d | out spk/sample %.2f zero-out %.2f | theta_h %.3f (min %.3f floor %.3f) |w|^2 %.3f | theta_o %.3f' % (
        sp[1].sum((0,2)).mean(), act.sum(1).mean(), (act.sum(0)>0).sum(), sp[2].sum((0,2)).mean(), (sp[2].sum((0,2))==0).float().mean(),
        th.mean(), th.min(), m.layers[0].theta_min, (m.layers[0].weight.detach()**2).sum(1).mean(), m.layers[1].theta.detach().mean()), flush=True)
stats('init')
for i in range(0, ntr, B):
    idx = perm[i:i+B]
    out = rule.train_step(m, (tr.x[idx].float(), tr.y[idx]), opt, ctx)
    if (i // B) % 150 == 0 and i: stats(f'step {i//B}')
stats('end')
m.eval()
xt, yt = te.x[:2000].float(), te.y[:2000]
lg = rule.evaluate(m, xt, (50, 200, 1000), ctx)
print(over, 'acc', [round((l.argmax(-1)==yt).float().mean().item(),4) for l in lg], 'cpu', round(time.process_time()-t0), flush=True)
