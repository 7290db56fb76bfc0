"""Module-level (picklable) task functions for tests/test_parallel.py's worker processes."""

import os
import time


def sleep_then_square(task: tuple[int, float]) -> tuple[int, int]:
    value, seconds = task
    time.sleep(seconds)
    return value * value, os.getpid()


def fail_on_three(value: int) -> int:
    if value == 3:
        raise ValueError(f"task {value} failed")
    return value


def own_pid(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()
