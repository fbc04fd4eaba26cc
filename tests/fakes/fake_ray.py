"""FakeRayActors: Ray actors that live in the test process, for actor classes that need a GPU or vLLM.

Real Ray runs (a local `ray.init`): object refs, `ray.get`, `ray.wait` and `ray.put` are Ray's own.
Only the actor process is faked, because OpenRLHF's model and vLLM actors cannot start on a CPU
machine and a worker process would not see the test's fake vLLM. The shapes follow Ray's:

    FakeActorClass(cls)          like `ray.remote(cls)`: `.options(**kw)` then `.remote(*args)` builds
                                 the actor (an `async def __init__` is awaited, as Ray does)
    handle.method.remote(...)    returns an ObjectRef of the result; top-level ObjectRef arguments
                                 are resolved and every argument goes through Ray's serializer, as
                                 for a real call; async methods run to completion
    pickle(handle)               stays a reference to the same actor, like a real ActorHandle

`handle.instance` (fake-only) gives a test the actor object to inspect.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
from typing import Any

import ray

_live_actors: dict[int, Any] = {}
_actor_ids = itertools.count()


def _finish(result: Any) -> Any:
    return asyncio.run(result) if inspect.iscoroutine(result) else result


def _ship(args: tuple, kwargs: dict) -> tuple[list, dict]:
    """What Ray does to call arguments: top-level ObjectRefs resolved, everything serialized."""
    args = [ray.get(value) if isinstance(value, ray.ObjectRef) else value for value in args]
    kwargs = {key: ray.get(value) if isinstance(value, ray.ObjectRef) else value for key, value in kwargs.items()}
    return ray.get(ray.put((args, kwargs)))


class FakeActorMethod:
    def __init__(self, handle: "FakeActorHandle", name: str) -> None:
        self.handle, self.name = handle, name

    def remote(self, *args: Any, **kwargs: Any) -> ray.ObjectRef:
        args, kwargs = _ship(args, kwargs)
        return ray.put(_finish(getattr(self.handle.instance, self.name)(*args, **kwargs)))


class FakeActorHandle:
    def __init__(self, actor_id: int) -> None:
        self._actor_id = actor_id

    @property
    def instance(self) -> Any:
        return _live_actors[self._actor_id]

    def __getattr__(self, name: str) -> FakeActorMethod:
        if name.startswith("_"):
            raise AttributeError(name)
        return FakeActorMethod(self, name)

    def __reduce__(self):
        return FakeActorHandle, (self._actor_id,)


class FakeActorClass:
    def __init__(self, cls: type) -> None:
        self.cls = cls
        self.options_used: list[dict] = []

    def options(self, **options: Any) -> "FakeActorClass":
        self.options_used.append(options)
        return self

    def remote(self, *args: Any, **kwargs: Any) -> FakeActorHandle:
        args, kwargs = _ship(args, kwargs)
        instance = self.cls.__new__(self.cls)
        _finish(self.cls.__init__(instance, *args, **kwargs))
        actor_id = next(_actor_ids)
        _live_actors[actor_id] = instance
        return FakeActorHandle(actor_id)
