"""Training throughput of the multi-task network on this machine (patches/s), fp32 vs bf16 autocast.

    python bench/train_throughput.py [--steps 10] [--batch-size 24] [--device cpu|cuda]

One optimisation step = forward + loss + backward + Adam on a batch of 128 px patches, with the same
augmentation as training. Prints a Markdown table; the first (warm-up) steps are not timed.
"""

from __future__ import annotations

import argparse
import time

import torch

from training.augment import AugmentConfig, augment
from training.losses import binary_dice_loss, multiclass_dice_loss, weighted_bce
from training.network import MultiTaskNet, NetworkConfig, to_input


def steps_per_second(decoders: bool, dtype: torch.dtype | None, batch: int, steps: int, device: str) -> float:
    torch.manual_seed(0)
    net = MultiTaskNet(NetworkConfig(decoders=decoders)).to(device, memory_format=torch.channels_last).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    images = torch.randint(0, 256, (batch, 128, 128, 3), dtype=torch.uint8, device=device)
    pix = torch.randint(0, 3, (batch, 128, 128), device=device)
    labels = torch.randint(0, 2, (batch,), device=device).float()

    def step() -> None:
        x, p = augment(to_input(images), pix, AugmentConfig())
        with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = net(x.contiguous(memory_format=torch.channels_last))
            loss = weighted_bce(out["logit"], labels, (1.0, 1.0))
            if decoders:
                loss = loss + binary_dice_loss(out["seg"], p > 0) + multiclass_dice_loss(out["pix"], p)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=24)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, batch {args.batch_size}")
    print("| network | precision | s/step | patches/s | epoch of 2,894 patches (s) |\n|---|---|---|---|---|")
    low = torch.bfloat16
    for decoders in (True, False):
        for name, dtype in (("fp32", None), ("bf16 autocast" if args.device == "cpu" else "bf16 AMP", low)):
            rate = steps_per_second(decoders, dtype, args.batch_size, args.steps, args.device)
            print(f"| {'multi-task' if decoders else 'single-task'} | {name} | {1 / rate:.3f} | "
                  f"{rate * args.batch_size:.1f} | {2894 / (rate * args.batch_size):.0f} |", flush=True)


if __name__ == "__main__":
    main()
