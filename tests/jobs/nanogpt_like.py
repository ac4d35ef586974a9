"""A training script with nanoGPT's habits, NOT using trainer/ and knowing nothing of the daemon:

- one checkpoint file, ``<out_dir>/ckpt.pt``, written with torch.save straight onto the final
  path (overwritten in place, not atomically), every ``--eval_interval`` iters, holding
  ``model``, ``optimizer``, ``iter_num``, ``best_val_loss`` and ``config`` like nanoGPT's;
- prints ``step N: train loss X, val loss Y`` at each eval and ``iter N: loss X, time Yms, mfu Z%``
  every ``--log_interval`` iters, like nanoGPT's train.py;
- ``--init_from=scratch|resume`` (resume loads ``out_dir/ckpt.pt``), nanoGPT's ``--key=value``
  arguments; a missing checkpoint under ``resume`` is an error, as in nanoGPT.

Deterministic: the model init and the batch of iter k are functions of (seed, k), one thread,
so a resumed run prints the same losses as an uninterrupted one from the resumed iter on.

Options for tests: ``--sleep`` seconds per iter, ``--n_embd`` (checkpoint size),
``--save_on_term`` (save a checkpoint on SIGTERM, then exit 143; nanoGPT itself just dies),
``--data`` (a file whose bytes seed the data, to show a data dir reached the job),
``--nan_at`` (from this iter the weights are NaN, as after a divergence: the eval's checkpoint
there holds them, then "loss nan" is printed and the script exits 1, as nanoGPT's NaN check would),
``--device`` (accepted and ignored: this is a CPU toy).

    python tests/jobs/nanogpt_like.py --out_dir=out --max_iters=200 --eval_interval=50
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import time

import torch

ap = argparse.ArgumentParser()
ap.add_argument("--out_dir", default="out")
ap.add_argument("--max_iters", type=int, default=200)
ap.add_argument("--eval_interval", type=int, default=50)
ap.add_argument("--log_interval", type=int, default=1)
ap.add_argument("--init_from", default="scratch", choices=["scratch", "resume"])
ap.add_argument("--sleep", type=float, default=0.0)
ap.add_argument("--n_embd", type=int, default=32)
ap.add_argument("--vocab", type=int, default=65)
ap.add_argument("--batch_size", type=int, default=16)
ap.add_argument("--learning_rate", type=float, default=3e-3)
ap.add_argument("--seed", type=int, default=1337)
ap.add_argument("--data", default=None)
ap.add_argument("--device", default="cpu")
ap.add_argument("--save_on_term", default="False")
ap.add_argument("--nan_at", type=int, default=-1)
args = ap.parse_args()

torch.set_num_threads(1)
torch.manual_seed(args.seed)
data_seed = args.seed
if args.data:
    with open(args.data, "rb") as f:
        data_seed += sum(f.read()) % 100000
    print(f"data: {args.data} (seed {data_seed})", flush=True)

model = torch.nn.Sequential(torch.nn.Embedding(args.vocab, args.n_embd), torch.nn.Linear(args.n_embd, args.vocab))
optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate)
iter_num, best_val_loss = 0, 1e9
ckpt_path = os.path.join(args.out_dir, "ckpt.pt")
if args.init_from == "resume":
    print(f"Resuming training from {args.out_dir}", flush=True)
    checkpoint = torch.load(ckpt_path, map_location="cpu")  # raises on a torn file, like nanoGPT
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    iter_num, best_val_loss = checkpoint["iter_num"], checkpoint["best_val_loss"]
else:
    print("Initializing a new model from scratch", flush=True)


def get_batch(k: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(data_seed * 100003 + k)
    x = torch.randint(0, args.vocab, (args.batch_size,), generator=g)
    return x, (x * 7 + 3) % args.vocab  # a learnable mapping: the loss goes down


@torch.no_grad()
def estimate_loss() -> dict[str, float]:
    out = {}
    for split, base in (("train", 10**6), ("val", 2 * 10**6)):
        losses = [torch.nn.functional.cross_entropy(model(x), y).item()
                  for x, y in (get_batch(base + i) for i in range(4))]
        out[split] = sum(losses) / len(losses)
    return out


def save() -> None:
    os.makedirs(args.out_dir, exist_ok=True)
    checkpoint = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "iter_num": iter_num,
                  "best_val_loss": best_val_loss, "config": vars(args)}
    print(f"saving checkpoint to {args.out_dir}", flush=True)
    torch.save(checkpoint, ckpt_path)  # straight onto the final path: nanoGPT's weak spot


if args.save_on_term == "True":
    def on_term(signum, frame):
        save()
        sys.exit(128 + signum)
    signal.signal(signal.SIGTERM, on_term)

t0 = time.time()
while True:
    if iter_num == args.nan_at:
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float("nan"))
    if iter_num % args.eval_interval == 0:
        losses = estimate_loss()
        print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}", flush=True)
        if iter_num > 0:
            best_val_loss = min(best_val_loss, losses["val"])
            save()
    if iter_num >= args.max_iters:
        break
    x, y = get_batch(iter_num)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if args.sleep:
        time.sleep(args.sleep)
    t1 = time.time()
    if iter_num % args.log_interval == 0:
        lossf = loss.item()
        print(f"iter {iter_num}: loss {lossf:.4f}, time {(t1 - t0) * 1000:.2f}ms, mfu "
              f"{-100.0 if iter_num < 5 else 4.45:.2f}%", flush=True)
        if not math.isfinite(lossf):
            sys.exit(1)
    t0 = t1
    iter_num += 1
