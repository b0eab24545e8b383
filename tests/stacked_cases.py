"""Shared cases of the stacked-network tests (test_stacked.py, test_plan.py): candidates, configs and
the outcome comparison (their ``data`` and ``micro`` fixtures are in conftest.py)."""

from __future__ import annotations

from nas_proxy.train import RunOutcome, TrainConfig

SPECS = [
    "ConvNet-D2-W8-AR-IN-AP",
    "ConvNet-D2-W4-AS-BN-MP",
    "ConvNet-D1-W4-AL-LN-NP",
    "ConvNet-D2-W4-AR-GN-AP",
    "ConvNet-D1-W4-AR-NN-NP",
]
FULL_BATCH = TrainConfig(epochs=6, batch_size=256)  # 100 images: one step an epoch, as the NAS protocol
MINI_BATCH = TrainConfig(epochs=2, batch_size=32)  # several differently ordered batches per epoch


def assert_same_outcomes(a: list[RunOutcome], b: list[RunOutcome], n_test: int) -> None:
    assert [o.status for o in a] == [o.status for o in b]
    assert [o.steps for o in a] == [o.steps for o in b]
    assert [o.params for o in a] == [o.params for o in b]
    for x, y in zip(a, b, strict=True):
        if x.status == "ok":  # float drift may move at most one test image across a boundary
            assert abs(x.accuracy - y.accuracy) <= 1 / n_test + 1e-9
