"""Dependencies every capability's handlers may ask for by name."""

from __future__ import annotations

from litestar.datastructures import State
from litestar.di import NamedDependency, Provide

from core.stores import Stores


def provide_stores(state: State) -> Stores:
    stores: Stores = state.stores
    return stores


DEPENDENCIES = {"stores": Provide(provide_stores, sync_to_thread=False)}

# Annotate handler parameters with this so Litestar injects the app's Stores by name.
StoresDep = NamedDependency[Stores]
