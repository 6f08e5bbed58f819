"""The engine's own tests run on trio's fake clock with in-memory fakes at its seams."""

from __future__ import annotations

import pytest
import trio

from listener.engine import Engine
from listener.engine.ports import Submitted
from tests.engine.fakes import FakeDrawProvider, FakeProvider, FakeStore, accept_all, settings

SHAPES = {"poll": FakeProvider, "draw": FakeDrawProvider}


def pytest_configure(config) -> None:
    config.addinivalue_line(
        "markers",
        "shapes(*names): the provider shapes a test runs with (default: poll and draw); "
        "a test about following a long generation is submit-then-poll's alone",
    )


def pytest_generate_tests(metafunc) -> None:
    """Every test that takes `provider` runs with a fake of each shape: submit-then-poll
    (Fusion Brain) and draw-then-download (GigaChat)."""
    if "provider" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("shapes")
        metafunc.parametrize("shape", marker.args if marker else tuple(SHAPES))


@pytest.fixture(autouse=True)
def no_fault_escapes_a_row_task(request, caplog):
    """An unexpected error is contained to its row (released, counted), which can hide a
    broken step behind a row that still ends well: no engine test may have one unless it
    says so (`contains_faults`)."""
    yield
    if request.node.get_closest_marker("contains_faults") is None:
        messages = [r.getMessage() for r in caplog.get_records("call")]
        assert not [m for m in messages if "unexpected error in its task" in m]


@pytest.fixture
def store(shape) -> FakeStore:
    return FakeStore(provider=SHAPES[shape].name)


@pytest.fixture
def provider(shape) -> FakeProvider:
    return SHAPES[shape]()


def long_generation(provider, seconds: float = 1000.0) -> None:
    """A generation that stays in Generate for `seconds`, followed all along: a long
    generation polled (submit-then-poll), a long download (draw-then-download)."""
    if isinstance(provider, FakeDrawProvider):
        provider.generation_time = 0.0
        provider.download_time = seconds
    else:
        provider.generation_time = seconds


def make_engine(store, provider, *, validate=accept_all, **kw) -> Engine:
    s = settings(**kw.pop("settings", {}))
    return Engine(settings=s, store=store, provider=provider, validate=validate, **kw)


async def run_until(predicate, *, seconds: float = 600, every: float = 0.05) -> None:
    """Poll `predicate` on the fake clock (polling is what the fakes make cheap)."""
    with trio.fail_after(seconds):
        while not predicate():  # noqa: ASYNC110 - a state of fakes, not an event
            await trio.sleep(every)


def scripted(answers, otherwise):
    """An answer function for a fake provider's `on_submit` / `on_outcome`: `answers` in
    turn (an exception among them is raised), then `otherwise(arg)`; with the list the
    moments it was asked, on the fake clock."""
    times: list[float] = []
    queue = list(answers)

    def answer(arg):
        times.append(trio.current_time())
        a = queue.pop(0) if queue else otherwise(arg)
        if isinstance(a, Exception):
            raise a
        return a

    return answer, times


def with_hint(provider, hint) -> None:
    """The fake provider's runs answered with a status-check hint: `hint` seconds, or
    `hint(request)`."""

    async def hinted(request):
        done = await FakeProvider.submit(provider, request)
        return Submitted(done.handle, check_after=hint(request) if callable(hint) else hint)

    provider.submit = hinted
