#!/bin/bash
# Final organism stages: the same N steps (default 2,500; N=3000 made the shipped checkpoints) with a linear
# lr decay, from the same lm0 checkpoint,
# once on all tokens (lm0 continued) and once with 2x2 pooling at hook E (the training-aware checkpoint).
set -e
cd "$(dirname "$0")/../.."
S0=$(python3 -c "import json;print(json.load(open('data/organism/checkpoints/lm0/ckpt/state.json'))['state']['step'])")
N=${N:-2500}
rm -rf data/organism/checkpoints/pool2
nohup .venv/bin/python -m tpx organism train --run pool2 --stage lm --init-from data/organism/checkpoints/lm0 \
  --pool 2 --vision-lr-mult 0.1 --adaptive --bf16 --batch-size 12 --n-questions 12 --lr 0.0015 --warmup 100 \
  --decay-start 100 --decay-steps $((N - 100)) --max-steps $N --minutes 45 --eval-minutes 5 --threads 1 \
  > data/organism/train_pool2.out 2>&1 &
nohup .venv/bin/python -m tpx organism train --resume --run lm0 --vision-lr-mult 0.1 --threads 1 \
  --decay-start $S0 --decay-steps $N --max-steps $((S0 + N)) --minutes 45 --eval-minutes 5 \
  >> data/organism/train_stage1.out 2>&1 &
echo "branches from step $S0, $N steps each"
