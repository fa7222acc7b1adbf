"""Who ends a run, and with which status: ownership and status as an explicit state machine.

Two things are tracked per session, and changed only by the transitions below:

* :class:`Role`, decided once when the run is found (kept until it is forgotten): may this process end the run?
* :class:`State`: is a stage writing into the run now (RUNNING), and how did the last stage leave it?

The final-status rule lives in one place, :meth:`Lifecycle.end`. Nothing here talks to MLflow: each transition
says what the session must do (mark RUNNING, renew or stop the heartbeat, write a final status).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Literal

from lightning_mlflow_ext.run.resolve import Origin

FinalStatus = Literal["FINISHED", "FAILED", "KILLED"]


class State(Enum):
    UNRESOLVED = "unresolved"  # no run yet: the next use finds or creates one
    IDLE = "idle"  # a run is known, no stage of this process writes into it (another rank's, a copy's)
    RUNNING = "running"  # a stage writes into the run: every exit path must settle it
    ENDED = "ended"  # this process gave the run its final status
    RELEASED = "released"  # the stage is over and the run was left open on purpose, marked released


class Role(Enum):
    """What this process may do to the run's status."""

    OWNER = "owner"  # ends it on every exit path: created here, or continued after it had ended (or was abandoned)
    BORROWER = "borrower"  # someone else's open run (a pipeline's): left open on success, ended when this fails
    GUEST = "guest"  # the user's own active run: their ``with mlflow.start_run()`` ends it, never this process


@dataclass(frozen=True)
class Ending:
    """What ending a stage does to the run."""

    status: str | None = None  # the final status to write; None: the run's status is left as it is
    release: bool = False  # left open on purpose: the heartbeat stops and says released (not a dead process's run)


class Lifecycle:
    """The run's ownership and status, as seen by one session.

    ``end_run`` is the user's choice: True ends even a run found open, False never ends a run on success,
    None (the default) ends the runs this process opened.
    """

    _state: State
    _role: Role
    _origin: Origin | None
    _found_status: str | None  # someone else's run continued here: the status it goes back to
    _failure: FinalStatus | None  # the worst outcome since the fit began
    _untouched: bool  # created by this session, and nothing but tags written into it yet
    _ended_with: str | None  # the final status this session wrote, while the run stays ENDED

    def __init__(self, end_run: bool | None) -> None:
        self._end_run = end_run
        self.forget()

    # ---- what the state says ------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def role(self) -> Role:
        return self._role

    @property
    def origin(self) -> Origin | None:
        return self._origin

    @property
    def running(self) -> bool:
        return self._state is State.RUNNING

    @property
    def running_with_content(self) -> bool:
        """RUNNING, and written beyond tags: nothing to do before the next write (the hot path asks this)."""
        return self._state is State.RUNNING and not self._untouched

    @property
    def status(self) -> str:
        """The run's status as this session leaves it: the final status it wrote, else RUNNING (a run left
        open on purpose, or one still being written)."""
        return self._ended_with if self._state is State.ENDED and self._ended_with else "RUNNING"

    @property
    def owns_run(self) -> bool:
        return self._role is Role.OWNER

    @property
    def settles_at_exit(self) -> bool:
        """The run is RUNNING because of this process, which must end it if it exits first."""
        return self._state is State.RUNNING and self._role is not Role.GUEST

    @property
    def replaceable_by_checkpoint(self) -> bool:
        """Created by this session moments ago and holding nothing but tags: a resumed checkpoint's run may
        take its place (Lightning asks for the run before it reads the checkpoint)."""
        return self._untouched and self._origin == "created"

    # ---- transitions ---------------------------------------------------------------------------

    def created(self) -> None:
        """IDLE -> RUNNING: this session created the run (and ends it, unless ``end_run=False``)."""
        self._found("created", owns=self._end_run is not False)
        self._state = State.RUNNING
        self._untouched = True

    def attached(self, origin: Origin, status: str, *, running: bool, ours: bool, abandoned: bool) -> bool:
        """IDLE -> RUNNING: this process takes up a run found elsewhere. True when it continues the run (marks it
        RUNNING if it is not, and heartbeats); False when someone else keeps it open and it is left as found.

        A run being continued (an ended one, one resumed from its own checkpoint, one whose writer died) is
        RUNNING while we log; a run of this package's then ends the usual way, anyone else's gets back the
        status it was found in (unless this session fails).
        """
        kept_open = origin != "checkpoint" and not abandoned and (origin == "active_run" or running)
        self._found(origin, owns=bool(self._end_run) if kept_open else self._end_run is not False)
        if not kept_open and not ours:
            self._found_status = status
        self._state = State.RUNNING
        return not kept_open

    def known(self, origin: Origin | None) -> None:
        """UNRESOLVED -> IDLE: a run is known. This process takes it up next (created / attached), or never
        writes into it (another rank's run, resolved here or adopted from rank 0)."""
        if self._state is State.UNRESOLVED:
            self._found(origin, owns=False)
            self._state = State.IDLE

    def start_stage(self) -> bool:
        """Any resolved state -> RUNNING. True when this process marks the run RUNNING again (an owner's run
        between stages: ``fit`` then ``test``); False when it only renews its heartbeat."""
        assert self._state is not State.UNRESOLVED, "resolve the run before a stage starts"
        was_running = self._state is State.RUNNING
        self._state = State.RUNNING
        return not was_running and self._role is Role.OWNER

    def begin_fit(self) -> None:
        """A fit (new or resumed) starts: an earlier failure of this run no longer decides its final status."""
        self._failure = None

    def wrote(self) -> None:
        """Something beyond tags landed in the run: it is no longer a placeholder a checkpoint's run replaces."""
        self._untouched = False

    def end(self, status: FinalStatus, *, may_release: bool) -> Ending:
        """RUNNING -> ENDED / RELEASED / IDLE. The final-status rule, the only one.

        The owner ends the run; a borrower ends it only when this process failed (nobody else will end a
        pipeline's run then); a guest never does. A failed fit stays FAILED through a later successful
        ``test()``; someone else's run continued here gets its own status back. A run left open is marked
        released when ``may_release`` (the process that resolved it, global rank 0).
        """
        if status != "FINISHED":
            self._failure = status
        if self._state is not State.RUNNING:
            return Ending()
        if self._role is Role.OWNER or (self._failure is not None and self._role is Role.BORROWER):
            self._state = State.ENDED
            self._ended_with = self._failure or self._found_status or status
            return Ending(status=self._ended_with)
        self._state = State.RELEASED if may_release else State.IDLE
        return Ending(release=may_release)

    def copied(self) -> None:
        """RUNNING -> IDLE in a copy sent to another process: it marks the run RUNNING again before it writes
        (the process it came from may have ended a stage since)."""
        if self._state is State.RUNNING:
            self._state = State.IDLE

    def forget(self) -> None:
        """Any state -> UNRESOLVED: the run is dropped; the next use resolves (or creates) one again."""
        self._state = State.UNRESOLVED
        self._role = Role.BORROWER
        self._origin = None
        self._found_status = None
        self._failure = None
        self._untouched = False
        self._ended_with = None

    def _found(self, origin: Origin | None, *, owns: bool) -> None:
        """The role follows from how the run was found: the owner ends it; otherwise a failure ends it, but
        for a user's own active run (their ``with`` block ends it) unless ``end_run=True``."""
        self._origin = origin
        if owns:
            self._role = Role.OWNER
        elif origin != "active_run" or self._end_run:
            self._role = Role.BORROWER
        else:
            self._role = Role.GUEST
