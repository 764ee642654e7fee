"""Peak tensor memory of a function call, on CUDA and on the CPU.

- CUDA: `torch.cuda.max_memory_allocated` during the call, above what was allocated before it.
- CPU: `torch.profiler` with `profile_memory=True` records every tensor allocation and free; the
  peak is the largest running sum of those events during the call (tensors alive before the
  call are not counted). Unlike the process's resident set size, this is not blurred by the
  allocator's caching or by memory the Python runtime holds, so it works in-process and can
  compare objectives run one after another.
"""

from collections.abc import Callable

import torch


def peak_bytes(fn: Callable[[], object], device: torch.device | str = "cpu") -> int:
    """The peak bytes of tensors allocated while `fn()` runs (its result is discarded)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak
