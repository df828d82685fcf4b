import torch as th

from sb3_acktr.kfac import KFAC


def pytest_configure() -> None:
    # The networks under test are small: one thread avoids OpenMP contention on small CI machines.
    th.set_num_threads(1)


# Every device this machine has: a GPU machine runs the device-parametrised tests on it too.
DEVICES = ["cpu", *(["cuda"] if th.cuda.is_available() else [])]

# The counters of trouble a healthy run never meets. A float64 retry is not among them: it is the fallback for a float32
# decomposition that does not converge on a near-singular factor, which depends on the platform's LAPACK build.
TROUBLE_COUNTERS = ("skipped_steps", "nonfinite_statistics", "inverse_failures")


def assert_no_numerical_trouble(kfac: KFAC) -> None:
    """Fail if a K-FAC optimizer skipped a step, dropped statistics or lost an inverse."""
    assert {name: kfac.counters[name] for name in TROUBLE_COUNTERS} == dict.fromkeys(TROUBLE_COUNTERS, 0)
