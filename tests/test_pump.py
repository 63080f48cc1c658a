"""fedsim.pump: the ClientApp travels pickled once."""

import pickle

from ray import cloudpickle

from fedsim.pump import PickledOnce, fast_message_pump, unpickled_once


def _app_fn_over(state: dict):
    def load():  # a closure, as Flower's backend gets it: cloudpickle pickles it by value
        state["loads"] += 1
        return state["app"]

    return load


def test_pickled_once_sends_the_same_bytes_and_an_actor_unpickles_them_once():
    state = {"app": "the ClientApp", "loads": 0}
    wrapped = PickledOnce(_app_fn_over(state))
    assert wrapped() == "the ClientApp" and state["loads"] == 1  # the driver's own call
    sent = [cloudpickle.dumps(wrapped) for _ in range(3)]
    assert sent[0] == sent[1] == sent[2]
    assert len(sent[0]) < len(wrapped.blob) + 200  # the blob and a reference to the loader
    unpickled_once.cache_clear()
    first, second = (pickle.loads(b) for b in sent[:2])
    assert first is second  # one app_fn per process, whatever the number of messages
    assert first() == "the ClientApp"
    assert unpickled_once.cache_info().misses == 1


def test_the_pump_wraps_the_app_fn_of_backends_built_inside_and_restores_build():
    from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend

    original = RayBackend.build
    seen = []
    def fake(self, app_fn):
        seen.append(app_fn)

    RayBackend.build = fake
    try:
        with fast_message_pump():
            RayBackend.build(object(), _app_fn_over({"app": 1, "loads": 0}))
        assert isinstance(seen[0], PickledOnce) and seen[0]() == 1
        assert RayBackend.build is fake  # restored
    finally:
        RayBackend.build = original
