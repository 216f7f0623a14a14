"""Where nodes come from: one interface for local processes, static URLs and Golem providers.

A fleet is an async context: entering it brings nodes up, leaving it takes them down.
While a run goes on, the fleet reports nodes lost and added through `events()`, says what it is
doing as `FleetNote`s to every listener handed to it (`on_note`; the run stores them), and the
dispatcher tells the fleet about nodes it found broken through `report_lost()` (a Golem
fleet blacklists the provider and rents a replacement).
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Literal

from pydantic import BaseModel

from beacon_golem.core.lifecycle import StartStop
from beacon_golem.core.node import Node


class FleetEvent(BaseModel):
    kind: Literal["added", "lost"]
    node: Node
    reason: str | None = None


class FleetNote(BaseModel):
    """A line of what the fleet is doing (offers, agreements, a node that failed to start, costs)."""

    fleet: str
    message: str


NoteListener = Callable[[FleetNote], None]
#: Called with each node a fleet is about to add (`Fleet.prepare_node`); it may change the node
#: (switch its runtime, fill its `extra`) before anyone else sees it.
NodePreparer = Callable[[Node], Awaitable[None]]


class Fleet(StartStop, ABC):
    """Base class: subclasses implement `start` and `stop`; the event plumbing is shared."""

    name: str = "fleet"

    def __init__(self) -> None:
        self._nodes: dict[str, Node] = {}
        self._events: asyncio.Queue[FleetEvent] = asyncio.Queue()
        self._note_listeners: list[NoteListener] = []
        #: Set before the fleet starts: a fleet that adds nodes as they come up (Golem, its
        #: replacements included) awaits it for each one before adding it; the others add their
        #: nodes at start only and leave it to the caller (`--runtime auto`'s phase).
        self.prepare_node: NodePreparer | None = None

    @abstractmethod
    async def start(self) -> None:
        """Bring the first nodes up (call `add_node` for each)."""

    @abstractmethod
    async def stop(self) -> None:
        """Take every node down and release what the fleet holds."""

    def on_note(self, listener: NoteListener) -> None:
        """Hand the fleet one more listener for its notes (every listener gets every note)."""
        self._note_listeners.append(listener)

    def note(self, message: str) -> None:
        """Tell every listener what the fleet is doing."""
        note = FleetNote(fleet=self.name, message=message)
        for listener in self._note_listeners:
            listener(note)

    def nodes(self) -> list[Node]:
        """The nodes alive now."""
        return list(self._nodes.values())

    def add_node(self, node: Node) -> None:
        self._nodes[node.node_id] = node
        self._events.put_nowait(FleetEvent(kind="added", node=node))

    def lose_node(self, node_id: str, reason: str) -> None:
        node = self._nodes.pop(node_id, None)
        if node is not None:
            self._events.put_nowait(FleetEvent(kind="lost", node=node, reason=reason))

    async def report_lost(self, node_id: str, reason: str) -> None:
        """The dispatcher found this node broken; a fleet may replace it."""
        self.lose_node(node_id, reason)

    def stop_replacing(self, reason: str) -> None:
        """From now on, rent or start no node in place of one lost (a runtime comparison: its
        figures are per machine). A fleet that never replaces nodes has nothing to do."""

    def expecting_nodes(self) -> bool:
        """Whether a node may still join (one is being rented or started): the dispatcher waits for
        it before failing jobs no live node serves. A fleet that never adds nodes may say True:
        the dispatcher's own wait (none outside Golem) decides."""
        return True

    def why_no_more_nodes(self) -> str:
        """Why no node will join any more (when `expecting_nodes` is False), for the jobs it fails."""
        return ""

    def accounting(self) -> list[BaseModel]:
        """What the nodes cost (agreements, debit notes, invoices, per-node totals): none by default."""
        return []

    async def events(self) -> AsyncIterator[FleetEvent]:
        while True:
            yield await self._events.get()

    def next_event_nowait(self) -> FleetEvent | None:
        try:
            return self._events.get_nowait()
        except asyncio.QueueEmpty:
            return None
