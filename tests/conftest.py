import torch as th


def pytest_configure() -> None:
    # The networks under test are small: one thread avoids OpenMP contention on small CI machines.
    th.set_num_threads(1)


# Every device this machine has: a GPU machine runs the device-parametrised tests on it too.
DEVICES = ["cpu", *(["cuda"] if th.cuda.is_available() else [])]
