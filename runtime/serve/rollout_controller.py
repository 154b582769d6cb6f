"""The rollouts' one decision-maker: a deployment of its own (no CPU reserved, so it fits beside replicas
that take every core) that holds each model's rollout, judges its intervals from what every replica
reports, and carries out the commands of `trtserve rollout`.

Replicas report their cumulative traffic counts every half second and get the rollouts back with a
generation number; a replica applies a generation it has not applied yet (runtime.serve.versions) and
says so in its next report, so a command can wait until every live replica routes as it says. The
rollouts are checkpointed in Ray's GCS key-value store after every change, so a restarted
decision-maker resumes them; replicas started later get them from their first report.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from ray import serve

from runtime.engine.credentials import log_through, scrub
from runtime.engine.errors import TrtserveError
from runtime.engine.evaluation import score_version
from runtime.engine.manifest import read_manifest
from runtime.engine.repository import version_dir
from runtime.rollout.commands import CommandError, CommandReply, Rollback, Start, Wait, parse
from runtime.rollout.gates import GateInputError, judge_gates, profile_p99_ms, stable_score_on_file
from runtime.rollout.intervals import interval_figures
from runtime.rollout.steps import Rollout, RolloutError

log = logging.getLogger("trtserve.rollouts")

LIVE_S = 5.0  # a replica that reported within this long is live
TICK_S = 0.5
NAMESPACE = "trtserve"
_MOVES = {"pause": Rollout.pause, "resume": Rollout.resume, "promote": Rollout.promote}  # by hand, no arguments


def _kv():
    try:
        from ray.experimental import internal_kv

        return internal_kv if internal_kv._internal_kv_initialized() else None
    except ImportError:
        return None


@serve.deployment(name="trtserve-rollouts", num_replicas=1, ray_actor_options={"num_cpus": 0})
class RolloutController:
    def __init__(self, stable: dict[str, str], repositories: dict[str, str]) -> None:
        # Our records go where Serve's own go in this replica (else nowhere below WARNING, and unscrubbed to
        # stderr above it), scrubbed of credentials: a failure to read a repository may quote its URI.
        log_through(logging.getLogger("trtserve"), logging.getLogger("ray.serve"))
        self._key = f"rollouts/{serve.get_replica_context().app_name}".encode()
        self._configured = dict(stable)  # model -> the version the app's args serve
        self._repositories = dict(repositories)  # paths or object-store URIs
        self.rollouts: dict[str, Rollout] = {}
        self.generation = 0
        self._latest: dict[str, tuple[float, int, dict[str, dict]]] = {}  # replica -> (when, generation, reports)
        self._at_start: dict[str, dict[str, dict]] = {}  # model -> replica -> report at the interval's start
        self._unanchored: set[str] = set()  # restored mid-interval: counted afresh once replicas report
        self._judging: set[str] = set()  # models whose start is judging its gates now
        self._restored_at = time.monotonic()
        self._restore()
        self._loop: asyncio.Task | None = None

    # --- replicas ---------------------------------------------------------------------------------------

    async def report(self, replica: str, applied: int, reports: dict[str, dict]) -> dict[str, Any]:
        """Store a replica's counts; the rollouts back only when it has not applied this generation yet."""
        self._ensure_loop()
        self._latest[replica] = (time.monotonic(), applied, reports)
        if applied == self.generation:
            return {"generation": self.generation}
        rollouts = {m: r.model_dump(mode="json") for m, r in self.rollouts.items()}
        return {"generation": self.generation, "rollouts": rollouts}

    # --- commands ---------------------------------------------------------------------------------------

    async def command(self, model: str, action: Any, args: Any) -> CommandReply:
        """Carry out a `trtserve rollout` command. Its arguments are checked whole before anything else
        (runtime.rollout.commands), so a refusal means nothing changed; an unexpected failure is logged and
        answered as failed, without its text."""
        self._ensure_loop()
        try:
            return CommandReply(result=await self._command(model, action, args))
        except RolloutError as e:
            return CommandReply(refused="conflict", error=scrub(str(e)))
        except (TrtserveError, CommandError) as e:  # GateInputError is a TrtserveError
            return CommandReply(refused="invalid", error=scrub(str(e)))
        except Exception:
            log.exception("a rollout command on model %.100r failed", model)
            return CommandReply(failed=True)

    async def _command(self, model: str, action: Any, args: Any) -> Any:
        parsed = parse(action, args)
        if model not in self._configured:
            raise RolloutError(f"this application serves no model {model!r}")
        if not isinstance(parsed, Wait):  # status and history read; every other command moves the rollout
            if action == "status":
                return self.status(model)
            return [e.model_dump(mode="json") for e in self._rollout(model).history]
        now = time.time()
        if isinstance(parsed, Start):
            rollout = await self._start(model, parsed, now)
        elif isinstance(parsed, Rollback):
            rollout = self._rollout(model).rollback(now, parsed.reason)
        else:
            rollout = _MOVES[action](self._rollout(model), now)
        self._set(model, rollout)
        applied = await self._wait_applied(timeout_s=parsed.timeout_s)
        return {**self.status(model), "applied_everywhere": applied}

    def status(self, model: str) -> dict[str, Any]:
        rollout = self.rollouts.get(model)
        if rollout is None:
            return {
                "model": model,
                "stable": self._stable(model),
                "candidate": None,
                "strategy": None,
                "state": None,
                "weight": 0.0,
                "reason": "",
                "intervals": [],
            }
        return {
            "model": model,
            "stable": rollout.spec.stable,
            "candidate": rollout.spec.candidate,
            "strategy": rollout.spec.strategy,
            "state": rollout.state,
            "step": rollout.step,
            "steps": rollout.spec.steps,
            "weight": rollout.weight,
            "serving": rollout.routing().stable,
            "failures": rollout.failures,
            "reason": rollout.reason,
            "intervals": rollout.intervals,
        }

    async def _start(self, model: str, args: Start, now: float) -> Rollout:
        current = self.rollouts.get(model)
        if current is not None and not current.ended:
            raise RolloutError(f"a rollout of {model} to version {current.spec.candidate} is {current.state}")
        if model in self._judging:  # its gates take a while (an offline eval): one start at a time
            raise RolloutError(f"a rollout of {model} is being started; its gates are being judged")
        self._judging.add(model)
        try:
            return await self._judge_start(model, args, now)
        finally:
            self._judging.discard(model)

    async def _judge_start(self, model: str, args: Start, now: float) -> Rollout:
        stable = self._stable(model)
        spec = args.spec(model, stable)
        directory = version_dir(self._repositories[model], model, spec.candidate)  # ArtifactError: not there
        manifest = read_manifest(directory)
        if args.profile is not None and args.latency_budget_ms is not None:
            profile_p99_ms(args.profile, manifest)  # a profile of another version: refused before any scoring
        stable_dir = version_dir(self._repositories[model], model, stable)
        stable_score = None
        if manifest.evaluation is not None:
            stable_score = stable_score_on_file(manifest.evaluation, read_manifest(stable_dir))
            if stable_score is None:  # stable was scored on another eval set, or none: score it offline now
                ev = manifest.evaluation
                try:
                    stable_score = await asyncio.to_thread(score_version, stable_dir, directory, ev.output, ev.metric)
                except TrtserveError:
                    raise
                except Exception as e:  # an engine failure: the gate cannot be judged, nothing starts
                    raise GateInputError(f"eval gate: scoring version {stable} failed: {type(e).__name__}: {e}") from e
        gates = judge_gates(manifest, stable_score, args.profile, args.latency_budget_ms)
        if not gates.passed:
            reason = f"gate: version {spec.candidate}: " + "; ".join(gates.reasons)
            return Rollout.refuse(spec, now, reason, figures={"gates": gates.figures})
        return Rollout.begin(spec, now, figures={"gates": gates.figures})

    def _rollout(self, model: str) -> Rollout:
        if model not in self.rollouts:
            raise RolloutError(f"{model}: no rollout has been started")
        return self.rollouts[model]

    def _stable(self, model: str) -> str:
        rollout = self.rollouts.get(model)
        return rollout.routing().stable if rollout is not None else self._configured[model]

    # --- the loop -----------------------------------------------------------------------------------

    def _ensure_loop(self) -> None:
        if self._loop is None or self._loop.done():
            self._loop = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                self.tick(time.time())
            except Exception:
                log.exception("rollout analysis failed; trying again")
            await asyncio.sleep(TICK_S)

    def tick(self, now: float) -> None:
        for model, rollout in list(self.rollouts.items()):
            if model in self._unanchored:
                # The counts of the interval cut short by the restart are gone with the old decision-maker:
                # the interval starts again from the replicas' first reports (two report periods).
                if self._latest and time.monotonic() - self._restored_at >= 4 * TICK_S:
                    self._unanchored.discard(model)
                    if rollout.state == "progressing":
                        self._set(model, rollout.model_copy(update={"interval_started": now}))
                continue
            if not rollout.due(now):
                continue
            spec = rollout.spec
            latest = {replica: reports.get(model, {}) for replica, (_, _, reports) in self._latest.items()}
            candidate, stable, agreement, _ = interval_figures(
                latest, self._at_start.get(model, {}), spec.stable, spec.candidate
            )
            self._set(model, rollout.judge(candidate, stable, agreement, now))  # a new interval: counted from now

    # --- state --------------------------------------------------------------------------------------

    def _set(self, model: str, rollout: Rollout) -> None:
        before = self.rollouts.get(model)
        moved = before is None or before.routing() != rollout.routing() or before.state != rollout.state
        generation = self.generation + 1 if moved else self.generation
        self._checkpoint(generation, {**self.rollouts, model: rollout})  # first: a failed write changes nothing
        self.rollouts[model] = rollout
        self.generation = generation
        if before is None or before.state != rollout.state:
            log.info("%s: rollout %s (%s)", model, rollout.state, rollout.reason)
        if before is None or rollout.interval_started != before.interval_started:
            self._at_start[model] = {r: reports.get(model, {}) for r, (_, _, reports) in self._latest.items()}

    def _checkpoint(self, generation: int, rollouts: dict[str, Rollout]) -> None:
        kv = _kv()
        if kv is None:
            return
        doc = {"generation": generation, "rollouts": {m: r.model_dump(mode="json") for m, r in rollouts.items()}}
        kv._internal_kv_put(self._key, json.dumps(doc).encode(), overwrite=True, namespace=NAMESPACE)

    def _restore(self) -> None:
        kv = _kv()
        raw = kv._internal_kv_get(self._key, namespace=NAMESPACE) if kv is not None else None
        if not raw:
            return
        doc = json.loads(raw)
        self.rollouts = {m: Rollout.model_validate(r) for m, r in doc["rollouts"].items()}
        self.generation = int(doc["generation"]) + 1  # replicas apply it again: harmless
        self._unanchored = {m for m, r in self.rollouts.items() if not r.ended}
        log.info("resumed rollouts of %s", ", ".join(self.rollouts) or "nothing")

    async def _wait_applied(self, timeout_s: float) -> bool:
        """Until every replica that reported within LIVE_S has applied this generation."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            now = time.monotonic()
            live = [applied for (when, applied, _) in self._latest.values() if now - when < LIVE_S]
            if live and all(applied >= self.generation for applied in live):
                return True
            await asyncio.sleep(0.1)
        return False
