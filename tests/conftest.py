import torch as th


def pytest_configure() -> None:
    # The networks under test are small: one thread avoids OpenMP contention on small CI machines.
    th.set_num_threads(1)
