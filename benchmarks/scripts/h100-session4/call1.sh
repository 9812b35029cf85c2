#!/bin/bash
# device call 1: lee_bp option sweep on the CPU cores (Numba, 1 thread each), spike_bp_dropout
# T/epoch screens for a -cpu preset on the GPU. Each run under timeout; curves printed per epoch.
cd "$(dirname "$0")/.."
pip install -q --no-deps --no-index --no-build-isolation -e . -e tests/fixtures/snn_suite_example_rule >/dev/null 2>&1 || echo PIP-FAILED
export SNN_SUITE_DATA=$PWD/.gpu/data PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 NUMBA_NUM_THREADS=1
nproc; nvidia-smi -L; lscpu | grep 'Model name'
R=/tmp/r; mkdir -p $R/logs
L="timeout 490 python3 -m suite.cli run --preset lee_bp/mnist-cpu --seeds 0 --backend fused --limit-test 2000 --curve 1000 --quiet"
$L --epochs 10 --out $R/lee_base > $R/logs/lee_base.log 2>&1 &
$L --epochs 10 --set lr=2e-3 --out $R/lee_lr2 > $R/logs/lee_lr2.log 2>&1 &
$L --epochs 10 --set lr_theta_ratio=1.0 --out $R/lee_th1 > $R/logs/lee_th1.log 2>&1 &
$L --epochs 10 --set kappa_hidden=-0.4 --out $R/lee_k04 > $R/logs/lee_k04.log 2>&1 &
$L --epochs 10 --set kappa_hidden=0.0 --out $R/lee_k0 > $R/logs/lee_k0.log 2>&1 &
$L --epochs 10 --batch-size 8 --out $R/lee_b8 > $R/logs/lee_b8.log 2>&1 &
$L --epochs 10 --set lr_decay_epochs=10 --out $R/lee_d10 > $R/logs/lee_d10.log 2>&1 &
timeout 490 python3 -m suite.cli run --preset lee_bp/mnist --seeds 0 --backend fused --limit-test 2000 --curve 1000 --quiet \
   --epochs 3 --out $R/lee_paper > $R/logs/lee_paper.log 2>&1 &
S="timeout 500 python3 -m suite.cli run --preset spike_bp_dropout/mnist-cpu --seeds 0 --device cuda --curve 2000 --limit-test 2000 --quiet"
$S --epochs 4 --set T=20 --set 'lr_milestones=(3,)' --timesteps 5,10,20 --out $R/sbd_T20 > $R/logs/sbd_T20.log 2>&1 &
$S --epochs 4 --set T=30 --set 'lr_milestones=(3,)' --timesteps 10,20,30 --out $R/sbd_T30 > $R/logs/sbd_T30.log 2>&1 &
$S --epochs 8 --set T=12 --set 'lr_milestones=(6,)' --timesteps 4,8,12 --out $R/sbd_T12 > $R/logs/sbd_T12.log 2>&1 &
$S --epochs 2 --set T=50 --set 'lr_milestones=(1,)' --timesteps 10,25,50 --out $R/sbd_T50 > $R/logs/sbd_T50.log 2>&1 &
sleep 60; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv; uptime
wait
uptime
grep -h "curve\|\[ok\]\|\[fail\|Error" $R/logs/*.log > $OUT/summary.txt
for f in $R/logs/*.log; do echo "== $f"; grep -v "^\s*$" $f | tail -5; done >> $OUT/summary.txt
tar czf $OUT/results.tgz -C $R .
cat $OUT/summary.txt
