"""Latency of runtimes measured side by side: rounds interleaved, so that a load change on the
machine hits every contender alike, and the median per contender."""
import statistics
import time
from typing import Callable, Dict, Mapping

__all__ = ['interleaved_latency']


def interleaved_latency(runners: Mapping[str, Callable[[], object]], rounds: int = 10,
                        warmup: int = 2) -> Dict[str, float]:
    """Median milliseconds per call of each runner, over ``rounds`` interleaved rounds.

    Args:
        runners (Mapping[str, callable]): name -> a call of no arguments (one inference).
        rounds (int): timed rounds; each calls every runner once. Default: 10.
        warmup (int): untimed rounds first. Default: 2.

    Returns:
        dict: name -> median milliseconds.
    """
    if rounds < 1 or warmup < 0:
        raise ValueError(f'need rounds >= 1 and warmup >= 0, got {rounds}, {warmup}')
    for _ in range(warmup):
        for run in runners.values():
            run()
    times = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - start) * 1000.0)
    return {name: statistics.median(values) for name, values in times.items()}
