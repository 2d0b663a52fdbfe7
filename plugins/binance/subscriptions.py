"""Which channels each WebSocket connection of a source carries, within the per-connection cap.

Binance allows 1024 streams per connection; ``max_streams_per_connection`` may set a lower cap
(a reconnect then re-subscribes, and may lose, less). At start the channels are spread evenly
over ``ceil(n / cap)`` connections; later listings go to the least-loaded connection that has
room, and a new connection is opened only when all are full; delistings leave their
connection's slot free for the next listing. Connections are never re-balanced (that would
unsubscribe and re-subscribe live channels for nothing).

Pure bookkeeping: the source applies what :meth:`SubscriptionPlan.add` and :meth:`remove`
return to its live connections.
"""

from __future__ import annotations


def split_evenly(items: list, max_per_group: int) -> list[list]:
    """``items`` in ``ceil(n / max)`` groups of nearly equal size, order kept."""
    if not items:
        return []
    groups = -(-len(items) // max_per_group)
    size, extra = divmod(len(items), groups)
    out, start = [], 0
    for i in range(groups):
        end = start + size + (1 if i < extra else 0)
        out.append(items[start:end])
        start = end
    return out


class SubscriptionPlan:
    """``slots[i]``: the channels connection ``i`` should carry (never more than ``cap``)."""

    def __init__(self, channels: list[str], cap: int):
        if cap < 1:
            raise ValueError("the streams-per-connection cap must be at least 1")
        self.cap = cap
        self.slots: list[list[str]] = split_evenly(sorted(channels), cap)
        self.where: dict[str, int] = {ch: i for i, slot in enumerate(self.slots) for ch in slot}

    def __contains__(self, channel: str) -> bool:
        return channel in self.where

    @property
    def channels(self) -> set[str]:
        return set(self.where)

    def add(self, channels: list[str]) -> dict[int, list[str]]:
        """Place the channels not placed yet; returns slot → channels added to it (slots past
        the current ones are new connections to open)."""
        added: dict[int, list[str]] = {}
        for ch in sorted(channels):
            if ch in self.where:
                continue
            open_slots = [i for i, slot in enumerate(self.slots) if len(slot) < self.cap]
            if open_slots:
                i = min(open_slots, key=lambda k: (len(self.slots[k]), k))
            else:
                i = len(self.slots)
                self.slots.append([])
            self.slots[i].append(ch)
            self.where[ch] = i
            added.setdefault(i, []).append(ch)
        return added

    def remove(self, channels: list[str]) -> dict[int, list[str]]:
        """Drop the channels; returns slot → channels removed from it."""
        removed: dict[int, list[str]] = {}
        for ch in channels:
            i = self.where.pop(ch, None)
            if i is None:
                continue
            self.slots[i].remove(ch)
            removed.setdefault(i, []).append(ch)
        return removed
