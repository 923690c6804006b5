"""Virtual time: one clock, one queue of events, and simulated peers that take turns holding a baton.

Each simulated peer runs its unchanged loop in a thread of its own (an `Actor`), but only the thread holding the
baton runs. A peer that waits for messages (`Actor.wait`: a mailbox wait with a deadline) parks: it schedules its own
wake-up and hands the baton back to the scheduler, which runs the earliest event next: a callback (a message delivery,
run on the scheduler's thread at the message's arrival time) or the resumption of a parked peer. A peer parked in
`wait` is also resumed, at the current virtual time, when `wake` is called for it (a message was filed in its
mailbox). Events at the same time run in the order they were scheduled, and nothing here reads the host's clock, so
the same inputs give the same event sequence on any host under any load (`trace` records it).

Work takes time lazily. `Actor.sleep` (a compute step) only adds to the actor's debt: the actor runs on ahead of the
clock, its own time being now + debt (what `clock()` reads while it holds the baton), and pays (`settle`: parks until
then) before it next looks at the world, which the simulated mailbox's lock makes it do (`transport`). Until then it
can only compute and send, and its sends are stamped with its own time, so the results are those of parking at every
step, without handing the baton (and the shared model) around at every step.
"""
from __future__ import annotations

import heapq
import itertools
import math
import threading
import traceback
from typing import Callable


class Scheduler:
    """The virtual clock (`now`, in seconds from 0) and the event queue. `run()` drives the simulation on the calling
    thread; everything else is called by the thread holding the baton (the scheduler's or an actor's)."""

    def __init__(self, trace: bool = False):
        self.now = 0.0
        self._queue: list[tuple[float, int, object, object]] = []  # (time, order, callback or (actor, token), label)
        self._seq = itertools.count()
        self._back = _baton()  # released when the running actor parks or ends
        self.current: Actor | None = None
        self.actors: list[Actor] = []
        self.events = 0  # events run so far
        self.trace: list[tuple[float, str]] | None = [] if trace else None

    def clock(self) -> float:
        """The virtual time as the baton holder sees it: now, plus the running actor's debt (its metered CPU time
        included, when the actor itself asks)."""
        actor = self.current
        if actor is None:
            return self.now
        if actor.meter is not None and threading.current_thread() is actor.thread:
            actor.meter.flush()
        return self.now + actor._debt

    def at(self, when: float, callback: Callable[[], None], label: str = "") -> None:
        """Run `callback` at virtual time `when` (not before now) on the scheduler's thread; `label` names it in the
        trace."""
        if math.isnan(when):
            raise ValueError(f"event {label!r} at NaN")
        heapq.heappush(self._queue, (max(when, self.now), next(self._seq), callback, label))

    def actor(self, name: str) -> Actor:
        """A new actor, to be started with `Actor.start` (what it runs may need the actor first: its mailbox)."""
        actor = Actor(self, name)
        self.actors.append(actor)
        return actor

    def run(self, until: float = math.inf, tick: Callable[[], None] | None = None, tick_every: int = 1000) -> None:
        """Run events in time order until none is left (every actor ended) or the next is after `until`;
        `tick()` every `tick_every` events (progress)."""
        while self._queue and self._queue[0][0] <= until:
            when, _, event, label = heapq.heappop(self._queue)
            if isinstance(event, tuple):  # an actor's resumption: stale once the actor was resumed otherwise
                actor, token = event
                if token != actor._token or actor.done:
                    continue  # a deadline that did not come to pass moves no clock
            self.now = when
            self.events += 1
            if self.trace is not None and label:
                self.trace.append((when, label if isinstance(label, str) else f"{label[0]} {label[1].name}"))
            if isinstance(event, tuple):
                self._hand_to(event[0])
            else:
                event()
            if tick is not None and self.events % tick_every == 0:
                tick()

    def _resume(self, actor: Actor, when: float, why: str) -> None:
        """Resume `actor` at `when` unless it is resumed otherwise before (its token moves on)."""
        heapq.heappush(self._queue, (max(when, self.now), next(self._seq), (actor, actor._token), (why, actor)))

    def _hand_to(self, actor: Actor) -> None:
        """Give `actor` the baton and wait until it parks or ends."""
        self.current = actor
        actor._go.release()
        self._back.acquire()
        self.current = None


def _baton() -> threading.Lock:
    """A lock held from the start: `release` hands the baton over, `acquire` waits for it (a C-level handoff)."""
    lock = threading.Lock()
    lock.acquire()
    return lock


class Actor:
    """A simulated peer's thread under the scheduler. `sleep` and `wait` may only be called from the actor's own
    thread; `wake` from whichever thread holds the baton."""

    def __init__(self, scheduler: Scheduler, name: str):
        self.scheduler = scheduler
        self.name = name
        self.result: object = None
        self.error: str | None = None  # the traceback of an exception that ended the target
        self.done = False
        self._target: Callable[[], object] | None = None
        self._go = _baton()
        self.guards: list = []  # what must know when the actor owes time (`arm`) and when not (`disarm`)
        self.meter = None  # measures the actor's own CPU time, if that is charged too (`compute.HostCpu`)
        self._token = 0  # a scheduled resumption is stale once the token moved on
        self._waiting = False
        self._debt = 0.0  # virtual seconds of work done but not yet waited out
        self._floor = 0.0  # a wake does not resume the actor before this: the time its wait began, debt paid
        self.thread = threading.Thread(target=self._main, name=f"sim-{name}", daemon=True)

    def start(self, target: Callable[[], object]) -> Actor:
        """Run `target()` in the actor's thread from the current virtual time on."""
        if self._target is not None:
            raise RuntimeError(f"actor {self.name} already started")
        self._target = target
        self.thread.start()
        self.scheduler._resume(self, self.scheduler.now, "start")
        return self

    def _main(self) -> None:
        self._go.acquire()
        if self.meter is not None:
            self.meter.resume()
        try:
            self.result = self._target()
            self.settle()
        except BaseException:  # a peer's crash ends that peer, as a process's would; the run reports it
            self.error = traceback.format_exc()
        finally:
            self.done = True
            self.scheduler._back.release()

    def sleep(self, seconds: float) -> None:
        """Take `seconds` of virtual time (a compute step), paid at the next `settle`."""
        if seconds > 0:
            if not self._debt:
                for guard in self.guards:
                    guard.arm()
            self._debt += seconds

    def settle(self) -> None:
        """Pay the debt: park until the clock has caught up with the actor's own time (from its own thread)."""
        if self.meter is not None:
            self.meter.pause()  # the CPU time measured since the last resumption joins the debt
        if self._debt > 0:
            until, self._debt = self.scheduler.now + self._debt, 0.0
            for guard in self.guards:
                guard.disarm()
            self._park(until, interruptible=False)
        elif self.meter is not None:
            self.meter.resume()

    def wait(self, deadline: float) -> None:
        """Wait until `deadline` (virtual) or until `wake`, whichever comes first; not before the actor has paid
        what it owes (a wake meanwhile resumes it then: it is never lost)."""
        self._own()
        if self.meter is not None:
            self.meter.pause()
        self._floor, self._debt = self.scheduler.now + self._debt, 0.0
        for guard in self.guards:
            guard.disarm()
        self._park(max(deadline, self._floor), interruptible=True)

    def wake(self) -> None:
        """Resume the actor now (or once it has paid what it owed when its wait began) if it is in `wait`; nothing
        otherwise."""
        if self._waiting:
            self._waiting = False
            self._token += 1
            self.scheduler._resume(self, max(self.scheduler.now, self._floor), "wake")

    def _own(self) -> None:
        if threading.current_thread() is not self.thread:
            raise RuntimeError(f"actor {self.name}: only its own thread can take virtual time")

    def _park(self, until: float, interruptible: bool) -> None:
        self._own()
        self._token += 1
        self.scheduler._resume(self, until, "resume")
        self._waiting = interruptible
        self.scheduler._back.release()
        self._go.acquire()
        self._waiting = False
        if self.meter is not None:
            self.meter.resume()
