"""Peak tensor memory of a function call, on CUDA and on the CPU.

- CUDA: `torch.cuda.max_memory_allocated` during the call, above what was allocated before it.
- CPU: `torch.profiler` with `profile_memory=True` records every tensor allocation and free; the
  peak is the largest running sum of those events (tensors alive before the call are not
  counted). Unlike the process's resident set size, this is not blurred by the allocator's
  caching or by memory the Python runtime holds, so it works in-process and can compare
  objectives run one after another. With `window`, the name of a `record_function` range the
  call enters once, only allocations made inside that range count: the peak is the largest
  running sum inside it above the sum at its start. The one-step trainer marks its training
  (`train.onestep.TRAINING`: objective and auxiliary networks, EMA, optimizer, steps), so the
  teacher, the generator's weights and the data loaded before it stay out of the comparison.
"""

from collections.abc import Callable

import torch


def peak_bytes(fn: Callable[[], object], device: torch.device | str = "cpu",
               window: str | None = None) -> int:
    """The peak bytes of tensors allocated while `fn()` runs (its result is discarded); on the
    CPU with `window`, only inside that `record_function` range (ValueError if never entered).
    On CUDA the whole call counts."""
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
    events = list(prof.profiler.kineto_results.events())
    start, end = -1, float("inf")
    if window is not None:
        ranges = [e for e in events if e.name() == window]
        if not ranges:
            raise ValueError(f"the call never entered the profiler range {window!r}")
        start, end = ranges[0].start_ns(), ranges[0].end_ns()
    allocations = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    live = base = peak = 0
    for t, nbytes in allocations:
        if t > end:
            break
        live += nbytes
        if t < start:
            base = live
        else:
            peak = max(peak, live - base)
    return peak
