"""The reference job: a small character-level transformer trained under trainer.runtime.

    python -m trainer.reference [--steps 800] [--device cpu|cuda] [--d-model 128] ...

The corpus is generated deterministically by the package (a seeded "language" of words with
Markov structure, so the loss falls clearly and a validation split measures it), and the
batch of step k is a pure function of (seed, k): resuming at any step sees exactly the data an
uninterrupted run would. With the defaults it trains in about 1-2 minutes on 2 CPU cores.
ROCm GPUs present as "cuda".
"""

from __future__ import annotations

import argparse
import math
import os
import random
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from trainer.runtime import Runtime

ALPHABET = "abcdefghijklmnopqrstuvwxyz .,\n"


def make_corpus(seed: int = 1234, n_chars: int = 200_000) -> str:
    """A deterministic text: words from a seeded lexicon, chosen by a sparse Markov chain."""
    rng = random.Random(seed)
    letters = ALPHABET[:26]
    lexicon = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 7))) for _ in range(300)]
    follow = {w: rng.sample(lexicon, 6) for w in lexicon}
    out, w, n = [], rng.choice(lexicon), 0
    while n < n_chars:
        out.append(w)
        n += len(w) + 1
        w = rng.choice(follow[w]) if rng.random() < 0.9 else rng.choice(lexicon)
        if rng.random() < 0.08:
            out.append("." if rng.random() < 0.7 else ",")
    text = " ".join(out)
    return text[:n_chars]


class Block(nn.Module):
    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class CharTransformer(nn.Module):
    def __init__(self, vocab: int, d: int, layers: int, heads: int, ctx: int, dropout: float):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(ctx, d)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d, heads, dropout) for _ in range(layers))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.tok.weight  # tied weights: the checkpoint must keep them tied
        self.mask: torch.Tensor  # the causal mask, a buffer (moves with .to(), never saved)
        self.register_buffer("mask", torch.triu(torch.full((ctx, ctx), float("-inf")), 1), persistent=False)
        self.apply(_init)


    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        x = self.drop(self.tok(idx) + self.pos(torch.arange(t, device=idx.device)))
        for b in self.blocks:
            x = b(x, self.mask[:t, :t])
        return self.head(self.ln(x))


def _init(m: nn.Module) -> None:
    # Small init (as GPT-2): with PyTorch's N(0, 1) embedding, tied into the output layer, the
    # first logits are huge and the loss starts near 70 instead of ln(vocab) = 3.4.
    if isinstance(m, (nn.Linear, nn.Embedding)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    if isinstance(m, nn.Linear) and m.bias is not None:
        nn.init.zeros_(m.bias)


def lr_at(step: int, base: float, warmup: int, total: int) -> float:
    """Warmup then cosine decay: a pure function of the step (nothing to resume)."""
    if step < warmup:
        return base * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


def batch(data: torch.Tensor, step: int, seed: int, bs: int, ctx: int, device: str):
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)  # data of step k = f(seed, k)
    ix = torch.randint(0, len(data) - ctx - 1, (bs,), generator=g)
    x = torch.stack([data[i:i + ctx] for i in ix.tolist()])
    y = torch.stack([data[i + 1:i + 1 + ctx] for i in ix.tolist()])
    return x.to(device), y.to(device)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m trainer.reference", description=__doc__.splitlines()[0])
    p.add_argument("--config", metavar="FILE", help="TOML file of these options (keys as the long "
                   "option names, e.g. d-model = 64 or d_model = 64); command-line options win")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--ctx", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--checkpoint-interval", type=int, default=100)
    p.add_argument("--threads", type=int, default=2, help="CPU threads (fixed: bit-exact resume "
                   "needs the same reduction order)")
    # NIGHTSHIFT_MAX_STEPS_PER_S: set by the local offload backend to mimic the cloud GPU's rate
    p.add_argument("--max-steps-per-s", type=float,
                   default=float(os.environ.get("NIGHTSHIFT_MAX_STEPS_PER_S") or 0.0),
                   help="throttle to mimic a slower GPU (benchmarks); 0 = as fast as possible")
    p.add_argument("--diverge-at", type=int, default=0, help=argparse.SUPPRESS)  # tests
    first, _ = p.parse_known_args(argv)
    if first.config:
        p.set_defaults(**load_config(first.config, p))
    return p.parse_args(argv)


def load_config(path: str, p: argparse.ArgumentParser) -> dict[str, object]:
    import tomllib

    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        p.error(f"--config {path}: {e}")
    known = {a.dest for a in p._actions}
    out = {}
    for k, v in raw.items():
        dest = k.replace("-", "_")
        if dest not in known or dest in ("config", "help"):
            p.error(f"--config {path}: unknown option {k!r}; see --help for the names")
        out[dest] = v
    return out


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    if a.device == "cpu":
        torch.use_deterministic_algorithms(True)
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no GPU visible to torch (on ROCm: is the ROCm build of "
                         "torch installed, and is HSA_OVERRIDE_GFX_VERSION set for gfx1103?)")
    text = make_corpus(a.seed)
    stoi = {c: i for i, c in enumerate(ALPHABET)}
    data = torch.tensor([stoi[c] for c in text], dtype=torch.long)
    split = int(len(data) * 0.9)
    train, val = data[:split], data[split:]
    model = CharTransformer(len(ALPHABET), a.d_model, a.layers, a.heads, a.ctx, a.dropout).to(a.device)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.01)
    rt = Runtime(model, opt, total_steps=a.steps, checkpoint_interval=a.checkpoint_interval,
                 best_metric="val_loss")
    total = rt.total_steps or a.steps
    start = rt.resume()
    print(f"reference job: {sum(p.numel() for p in model.parameters())} parameters, steps "
          f"{start}->{total} on {a.device}", flush=True)
    t_last = time.monotonic()
    for step in range(start, total):
        if rt.skip(step):
            rt.step_end(step + 1, loss=None)
            continue
        for gr in opt.param_groups:
            gr["lr"] = lr_at(step, a.lr, warmup=max(1, total // 20), total=total)
        model.train()
        x, y = batch(train, step, a.seed, a.batch, a.ctx, a.device)
        logits = model(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
        if a.diverge_at and a.diverge_at <= step + 1 < a.diverge_at + 5:
            # five poisoned batches: the loss explodes there (tests of the divergence watchdog,
            # whose rollback skips exactly such batches)
            loss = loss * 1e4
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if (step + 1) % a.eval_every == 0 or step + 1 == total:
            rt.report_eval({"val_loss": evaluate(model, val, a)}, step=step + 1)
        if a.max_steps_per_s > 0:
            wait = 1.0 / a.max_steps_per_s - (time.monotonic() - t_last)
            if wait > 0:
                time.sleep(wait)
            t_last = time.monotonic()
        rt.step_end(step + 1, loss=loss.item(), samples=a.batch)
    rt.finish()
    print(f"reference job done: step {rt.step}, val_loss {rt.metrics.get('val_loss', float('nan')):.4f}",
          flush=True)


@torch.no_grad()
def evaluate(model: nn.Module, val: torch.Tensor, a: argparse.Namespace) -> float:
    # Evaluation must not consume the global RNG (dropout is off in eval; data uses its own).
    model.eval()
    losses = []
    for i in range(4):
        x, y = batch(val, i, a.seed + 7, a.batch, a.ctx, a.device)
        logits = model(x)
        losses.append(F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1)).item())
    model.train()
    return sum(losses) / len(losses)


if __name__ == "__main__":
    main()
