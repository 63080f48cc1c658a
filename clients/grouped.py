"""Shared arrays of several groups in one message (``fedrep-groups``): every array has a
leading group axis and the config names each client's group (``client-groups``)."""

from __future__ import annotations

import torch


class GroupBodies(dict):
    """{name: tensor (groups × shape)} plus ``group_of`` (client -> group): what a client
    loads is its group's row of every array."""

    def __init__(self, stacked: dict[str, torch.Tensor], group_of: dict[int, int]) -> None:
        super().__init__(stacked)
        self.group_of = group_of

    def of(self, client: int) -> dict[str, torch.Tensor]:
        """``client``'s shared arrays (its group's row)."""
        return {name: value[self.group_of[client]] for name, value in self.items()}

    def rows(self, name: str, clients: list[int]) -> torch.Tensor:
        """Array ``name`` for every client of ``clients``, stacked (row = client)."""
        return self[name][[self.group_of[c] for c in clients]]


def unpack_groups(shared: dict[str, torch.Tensor], record) -> dict[str, torch.Tensor]:
    """``shared`` as :class:`GroupBodies` when the message's config record names the
    clients' groups, else unchanged."""
    if "client-groups" not in record:
        return shared
    clients = [int(c) for c in record["clients"]]
    return GroupBodies(shared, dict(zip(clients, (int(g) for g in record["client-groups"]))))
