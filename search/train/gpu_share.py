"""Several trials on one GPU: each process's share of the GPU's memory.

Trials share a GPU when `--workers N` starts more processes than there are GPUs (the launcher
hands GPUs out round-robin and records how many share each: RunSettings.device_shared_by) or
when Ray places fractions of one (`--gpus-per-trial 0.25`: four trials per GPU). Without a cap
one trial's batch of 1024 could take the memory the others are about to ask for, and the
out-of-memory error would land in whichever trial asked next. With a cap of its share per
process (torch.cuda.set_per_process_memory_fraction), the trial that asks for too much fails
alone (the objective fails it, frees its memory, and the study goes on).

The share leaves out what each process holds outside PyTorch's caching allocator (the CUDA
context, cuBLAS and cuDNN handles: CONTEXT_BYTES each, a rough figure) so that the shares
plus those fit the GPU. One process alone on a GPU gets no cap.
"""
from __future__ import annotations

import torch

CONTEXT_BYTES = 1 << 30   # per process, outside the caching allocator (CUDA context, handles)
MIN_FRACTION = 0.01       # never below 1% of the GPU (a tiny GPU with many sharers)
STUCK_SHARE = 0.25        # more than this share of a process's memory stuck: it stops


def memory_fraction(shared_by: int, total_bytes: int,
                    context_bytes: int = CONTEXT_BYTES) -> float | None:
    """The fraction of a GPU of `total_bytes` one of `shared_by` processes may allocate, or
    None (no cap) for a process alone on its GPU."""
    if shared_by <= 1:
        return None
    usable = total_bytes - shared_by * context_bytes
    return max(MIN_FRACTION, usable / shared_by / total_bytes)


def cap_memory(device: torch.device, shared_by: int) -> float | None:
    """Cap this process's allocations on `device` at its share; returns the fraction set
    (None: alone on the GPU, or not a GPU)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    # set_per_process_memory_fraction needs an index: plain "cuda" is the current device
    index = device.index if device.index is not None else torch.cuda.current_device()
    total = torch.cuda.get_device_properties(index).total_memory
    fraction = memory_fraction(shared_by, total)
    if fraction is not None:
        torch.cuda.set_per_process_memory_fraction(fraction, index)
    return fraction


def stuck_memory(device: torch.device) -> str | None:
    """Why this process should stop using `device`, or None: after an out-of-memory error,
    memory it has reserved but holds no tensor in, that even empty_cache cannot give back,
    is more than STUCK_SHARE of what it may use. Seen on an H200 under a 2.6 GiB cap: a
    ResNet18 batch of 1024 ran out of memory inside its CUDA-graph capture, 2.4 GiB stayed
    reserved (the capture's private pool, we think), and every later trial of that process,
    batch 32 too, ran out of memory. A new process starts with all of its share."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    torch.cuda.empty_cache()
    stuck = torch.cuda.memory_reserved(index) - torch.cuda.memory_allocated(index)
    cap = getattr(torch.cuda, "get_per_process_memory_fraction", None)   # torch >= 2.9
    usable = torch.cuda.get_device_properties(index).total_memory * (cap(index) if cap else 1)
    if stuck <= STUCK_SHARE * usable:
        return None
    return (f"{stuck / 2**30:.1f} GiB of this process's {usable / 2**30:.1f} GiB of GPU "
            "memory stayed reserved after the out-of-memory error")
